import datetime
import zoneinfo

from django import forms
from django.utils import timezone

from reporting.services.kpis import BUCKETS, SEGMENTS, Filters

DEFAULT_DAYS = 30
MAX_DAYS = 800


class KpiFilterForm(forms.Form):
    start = forms.DateField(
        required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    end = forms.DateField(
        required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    bucket = forms.ChoiceField(
        choices=[(b, b.title()) for b in BUCKETS], required=False, initial="day"
    )
    segment = forms.ChoiceField(
        label="Segment by",
        choices=[
            ("none", "Nothing"),
            ("keyword", "Trigger keyword"),
            ("business_unit", "Business unit"),
            ("destination", "Destination"),
        ],
        required=False,
    )
    keyword = forms.CharField(required=False, max_length=64)
    business_unit = forms.CharField(required=False, max_length=64)
    destination = forms.CharField(required=False, max_length=50)
    pilot = forms.DateField(
        label="Pilot start",
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="Compare the KPIs before and after this day.",
    )
    tz = forms.CharField(label="Time zone", required=False, max_length=64)

    def clean_tz(self):
        name = self.cleaned_data.get("tz") or timezone.get_current_timezone_name()
        try:
            return zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise forms.ValidationError(
                f"{name!r} is not a time zone name; use one such as Europe/Helsinki."
            ) from None

    def clean(self):
        data = super().clean()
        tz = data.get("tz") or zoneinfo.ZoneInfo("UTC")
        today = timezone.now().astimezone(tz).date()
        data["end"] = data.get("end") or today
        data["start"] = data.get("start") or data["end"] - datetime.timedelta(
            days=DEFAULT_DAYS - 1
        )
        if data["start"] > data["end"]:
            self.add_error(
                "start", "The start is after the end; pick an earlier start."
            )
        elif (data["end"] - data["start"]).days > MAX_DAYS:
            self.add_error("start", f"Pick a range of at most {MAX_DAYS} days.")
        if data.get("bucket") not in BUCKETS:
            data["bucket"] = "day"
        if data.get("segment") not in SEGMENTS:
            data["segment"] = "none"
        return data

    def filters(self) -> Filters:
        data = self.cleaned_data
        return Filters(
            start=data["start"],
            end=data["end"],
            tz=data["tz"],
            bucket=data["bucket"],
            segment=data["segment"],
            keyword=data.get("keyword", ""),
            business_unit=data.get("business_unit", ""),
            destination=data.get("destination", ""),
            pilot=data.get("pilot"),
        )


class ReconciliationForm(forms.Form):
    start = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(
        widget=forms.DateInput(attrs={"type": "date"}), help_text="Included."
    )

    def clean(self):
        data = super().clean()
        if data.get("start") and data.get("end") and data["start"] > data["end"]:
            self.add_error(
                "start", "The start is after the end; pick an earlier start."
            )
        return data
