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


class AssignForm(forms.Form):
    """Assign a case to one person or to a group."""

    user = forms.ModelChoiceField(
        queryset=None, required=False, label="Person", empty_label="— choose a person —"
    )
    group = forms.ModelChoiceField(
        queryset=None, required=False, label="or group", empty_label="— or a group —"
    )

    def __init__(self, *args, users=None, groups=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["user"].queryset = users
        self.fields["group"].queryset = groups

    def clean(self):
        data = super().clean()
        if bool(data.get("user")) == bool(data.get("group")):
            raise forms.ValidationError("Choose either a person or a group.")
        return data


class LookupFixForm(forms.Form):
    key = forms.CharField(label="CRM value (key)", max_length=200)
    value = forms.CharField(
        label="ERP value",
        max_length=500,
        widget=forms.TextInput(attrs={"list": "erp-codes", "autocomplete": "off"}),
        help_text="The ERP code this CRM value stands for, for example a product code.",
        error_messages={"required": "Enter the ERP value that the key maps to."},
    )


class CustomerFixForm(forms.Form):
    name = forms.CharField(
        label="Customer name",
        max_length=300,
        required=False,
        help_text="Used when creating a new ERP customer.",
    )
    link_to = forms.ModelChoiceField(
        queryset=None,
        required=False,
        label="Or link to an existing ERP customer",
        empty_label="— create a new customer —",
    )

    def __init__(self, *args, customers=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["link_to"].queryset = customers


class CompensateForm(forms.Form):
    note = forms.CharField(
        label="Why reverse the ERP document",
        widget=forms.Textarea(attrs={"rows": 2}),
        max_length=2000,
        error_messages={"required": "Write why the ERP document must be reversed."},
    )
