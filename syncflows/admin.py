from django import forms
from django.contrib import admin
from django.db import transaction

from meshline.expressions import MAPPING_VARIABLES, TRIGGER_VARIABLES, check_expression
from syncflows import models


class SecretsForm(forms.ModelForm):
    """Secrets are write-only: the form shows how many are stored, never their values."""

    secret_field = "secrets"
    new_secret = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="A new secret becomes the current one; the previous one stays valid until removed.",
    )
    drop_previous = forms.BooleanField(
        required=False, help_text="Remove every secret but the newest (end a rotation)."
    )

    def save(self, commit=True):
        instance = super().save(commit=False)
        stored = getattr(instance, self.secret_field) or []
        if isinstance(stored, dict):
            stored = [stored.get("password") or stored.get("token")] if stored else []
        secrets = [s for s in stored if s]
        new = self.cleaned_data.get("new_secret")
        if new:
            secrets = [new, *secrets]
        if self.cleaned_data.get("drop_previous"):
            secrets = secrets[:1]
        setattr(instance, self.secret_field, secrets or None)
        if commit:
            instance.save()
        return instance


class ConnectorForm(SecretsForm):
    class Meta:
        model = models.Connector
        exclude = ["secrets"]


@admin.register(models.Connector)
class ConnectorAdmin(admin.ModelAdmin):
    form = ConnectorForm
    list_display = ["slug", "name", "kind", "is_active", "business_unit", "secret_count"]
    list_filter = ["kind", "is_active", "business_unit"]
    search_fields = ["slug", "name"]

    @admin.display(description="Secrets stored")
    def secret_count(self, obj):
        return len(obj.secret_list)


class DestinationForm(SecretsForm):
    secret_field = "credentials"

    class Meta:
        model = models.Destination
        exclude = ["credentials"]


@admin.register(models.Destination)
class DestinationAdmin(admin.ModelAdmin):
    form = DestinationForm
    list_display = ["slug", "name", "adapter", "is_active"]
    list_filter = ["adapter", "is_active"]
    search_fields = ["slug", "name"]


@admin.register(models.Route)
class RouteAdmin(admin.ModelAdmin):
    list_display = ["__str__", "business_unit", "region", "object_type", "destination", "mode", "priority", "is_active"]
    list_filter = ["mode", "destination", "business_unit", "region", "is_active"]
    search_fields = ["business_unit", "region", "object_type"]
    list_editable = ["mode", "priority", "is_active"]
    list_display_links = ["__str__"]


class LookupRowInline(admin.TabularInline):
    model = models.LookupRow
    extra = 1


@admin.register(models.LookupTable)
class LookupTableAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "missing_reason", "row_count"]
    search_fields = ["slug", "name", "rows__key", "rows__value"]
    inlines = [LookupRowInline]

    def get_queryset(self, request):
        from django.db.models import Count

        return super().get_queryset(request).annotate(row_total=Count("rows"))

    @admin.display(description="Rows", ordering="row_total")
    def row_count(self, obj):
        return obj.row_total


@admin.register(models.LookupRow)
class LookupRowAdmin(admin.ModelAdmin):
    list_display = ["table", "key", "value", "updated_at"]
    list_filter = ["table"]
    search_fields = ["key", "value"]


class TriggerForm(forms.ModelForm):
    class Meta:
        model = models.Trigger
        fields = "__all__"

    def clean_condition(self):
        condition = self.cleaned_data["condition"]
        problems = check_expression(condition, TRIGGER_VARIABLES)
        if problems:
            raise forms.ValidationError(problems)
        return condition


@admin.register(models.Trigger)
class TriggerAdmin(admin.ModelAdmin):
    form = TriggerForm
    list_display = ["slug", "name", "object_type", "connector", "is_active", "current_version"]
    list_filter = ["object_type", "is_active", "connector"]
    search_fields = ["slug", "name", "condition"]
    readonly_fields = ["current_version"]

    def save_model(self, request, obj, form, change):
        from syncflows.services.configuration import save_trigger

        with transaction.atomic():
            save_trigger(obj, acting_user=request.user)


@admin.register(models.TriggerVersion)
class TriggerVersionAdmin(admin.ModelAdmin):
    list_display = ["trigger", "number", "object_type", "created_by", "created_at"]
    list_filter = ["trigger"]
    readonly_fields = ["trigger", "number", "object_type", "condition", "created_by", "created_at"]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class BriefVersionForm(forms.ModelForm):
    class Meta:
        model = models.BriefVersion
        fields = "__all__"

    def clean_mapping(self):
        mapping = self.cleaned_data["mapping"]
        if not isinstance(mapping, dict) or not mapping:
            raise forms.ValidationError("The mapping is a JSON object of field name to CEL expression.")
        problems = []
        for name, expression in mapping.items():
            problems += [f"{name}: {p}" for p in check_expression(str(expression), MAPPING_VARIABLES)]
        if problems:
            raise forms.ValidationError(problems)
        return mapping


class BriefVersionInline(admin.StackedInline):
    """Versions are shown read-only: drafts are edited, reviewed and approved
    on the brief pages, which keep the two-party sign-off."""

    model = models.BriefVersion
    form = BriefVersionForm
    extra = 0
    max_num = 0
    can_delete = False
    fields = ["number", "state", "command_type", "mapping", "command_schema", "acceptance", "ready_condition"]
    readonly_fields = fields


@admin.register(models.Brief)
class BriefAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "owner", "sla_hours"]
    search_fields = ["name", "slug", "intent"]
    filter_horizontal = ["triggers"]
    inlines = [BriefVersionInline]


@admin.register(models.SandboxProduct)
class SandboxProductAdmin(admin.ModelAdmin):
    list_display = ["code", "name", "destination", "is_active"]
    list_filter = ["destination", "is_active"]
    search_fields = ["code", "name"]


@admin.register(models.SandboxCustomer)
class SandboxCustomerAdmin(admin.ModelAdmin):
    list_display = ["reference", "name", "destination"]
    list_filter = ["destination"]
    search_fields = ["reference", "name"]


@admin.register(models.SandboxCurrency)
class SandboxCurrencyAdmin(admin.ModelAdmin):
    list_display = ["code", "destination"]
    list_filter = ["destination"]


@admin.register(models.SandboxOrder)
class SandboxOrderAdmin(admin.ModelAdmin):
    list_display = ["number", "crm_reference", "customer", "currency", "total", "state", "created_at"]
    list_filter = ["destination", "state", "currency"]
    search_fields = ["number", "crm_reference", "idempotency_key"]

    def has_add_permission(self, request):
        return False


from syncflows import admin_crm  # noqa: E402,F401  (registers the CRM API access admin)


class SyntheticTestForm(forms.ModelForm):
    class Meta:
        model = models.SyntheticTest
        fields = ["brief", "name", "keyword", "payload", "expected_command", "expected_reason"]

    def clean(self):
        data = super().clean()
        brief, keyword = data.get("brief"), data.get("keyword")
        if brief and keyword and keyword not in (brief.keywords or []):
            self.add_error("keyword", f"Use one of the brief's keywords: {', '.join(brief.keywords or []) or 'none set'}.")
        if bool(data.get("expected_command")) == bool(data.get("expected_reason")):
            raise forms.ValidationError("Set either the expected command or the expected reason code, not both.")
        payload = data.get("payload")
        if payload is not None and not (isinstance(payload, dict) and "record" in payload):
            self.add_error("payload", 'The payload is a JSON object with a "record" key.')
        return data


@admin.register(models.SyntheticTest)
class SyntheticTestAdmin(admin.ModelAdmin):
    form = SyntheticTestForm
    list_display = ["name", "brief", "keyword", "expected_reason"]
    list_filter = ["brief", "keyword"]
    search_fields = ["name", "keyword", "brief__name"]

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)
