"""Admin for CRM API access and connector health.

Credentials are write-only: the form shows which keys are stored, never
their values, and a blank field keeps the stored value.
"""

import json

from django import forms
from django.contrib import admin

from syncflows.models import ConnectorApiAccess, ConnectorHealth


class ConnectorApiAccessForm(forms.ModelForm):
    base_url = forms.URLField(
        assume_scheme="https",
        help_text=ConnectorApiAccess._meta.get_field("base_url").help_text,
    )
    token_url = forms.URLField(
        assume_scheme="https",
        required=False,
        help_text=ConnectorApiAccess._meta.get_field("token_url").help_text,
    )
    token = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text=(
            "A HubSpot private app token or a Pipedrive API token. "
            "Blank keeps the stored one."
        ),
    )
    client_id = forms.CharField(
        required=False, help_text="OAuth client id. Blank keeps the stored one."
    )
    client_secret = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="OAuth client secret. Blank keeps the stored one.",
    )
    refresh_token = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="OAuth refresh token. Blank keeps the stored one.",
    )
    clear_credentials = forms.BooleanField(
        required=False, help_text="Remove every stored credential and access token."
    )

    class Meta:
        model = ConnectorApiAccess
        fields = [
            "connector",
            "crm",
            "base_url",
            "token_url",
            "api_version",
            "auth_type",
            "credentials_env",
            "requests_per_second",
            "max_attempts",
            "max_wait_seconds",
            "timeout_seconds",
            "page_size",
            "settings",
            "is_active",
        ]

    def save(self, commit=True):
        instance = super().save(commit=False)
        stored = (
            {}
            if self.cleaned_data.get("clear_credentials")
            else dict(instance.credentials or {})
        )
        for key in ("token", "client_id", "client_secret", "refresh_token"):
            value = self.cleaned_data.get(key)
            if value:
                stored[key] = value
        if self.cleaned_data.get("clear_credentials") or self.cleaned_data.get(
            "refresh_token"
        ):
            instance.access_token = None
            instance.token_expires_at = None
        instance.credentials = stored or None
        if commit:
            instance.save()
        return instance


@admin.register(ConnectorApiAccess)
class ConnectorApiAccessAdmin(admin.ModelAdmin):
    form = ConnectorApiAccessForm
    list_display = (
        "connector",
        "crm",
        "auth_type",
        "base_url",
        "requests_per_second",
        "token_expires_at",
        "is_active",
    )
    list_filter = ("crm", "auth_type", "is_active")
    search_fields = ("connector__slug", "connector__name", "base_url")
    readonly_fields = ("stored_credentials", "token_expires_at", "updated_at")

    @admin.display(description="Stored credentials")
    def stored_credentials(self, obj):
        keys = sorted((obj.credentials or {}).keys()) if obj and obj.pk else []
        return ", ".join(keys) or "none"


@admin.register(ConnectorHealth)
class ConnectorHealthAdmin(admin.ModelAdmin):
    list_display = (
        "connector",
        "last_read_at",
        "last_read_ok_at",
        "rate_limit_hits",
        "token_refreshes",
        "auth_failed_at",
    )
    search_fields = ("connector__slug",)
    readonly_fields = [
        field.name
        for field in ConnectorHealth._meta.fields
        if field.name not in ("id", "recent_errors")
    ] + ["errors"]
    exclude = ("recent_errors",)

    @admin.display(description="Recent errors")
    def errors(self, obj):
        return json.dumps(obj.recent_errors, indent=2, ensure_ascii=False)

    def has_add_permission(self, request):
        return False
