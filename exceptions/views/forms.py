"""Forms of the case actions that need a written note."""

from django import forms


class ResolveForm(forms.Form):
    note = forms.CharField(
        label="Resolution note",
        widget=forms.Textarea(attrs={"rows": 3}),
        max_length=2000,
        help_text="What was fixed, so the next person can follow it.",
        error_messages={"required": "Write what was fixed before resolving."},
    )


class DismissForm(forms.Form):
    reason = forms.CharField(
        label="Reason for dismissing",
        widget=forms.Textarea(attrs={"rows": 3}),
        max_length=2000,
        help_text="Why no fix is needed, for example a test deal.",
        error_messages={"required": "Write why this case needs no fix."},
    )
