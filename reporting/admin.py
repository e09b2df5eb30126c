from django.contrib import admin

from reporting.models import (
    DeclaredSchema,
    DriftFinding,
    ErpInvoiceSnapshot,
    ObservedField,
    ReconciliationRun,
)


@admin.register(DeclaredSchema)
class DeclaredSchemaAdmin(admin.ModelAdmin):
    list_display = ["connector", "object_type", "updated_at", "updated_by"]
    list_filter = ["connector"]
    search_fields = ["object_type"]
    readonly_fields = ["updated_at"]


@admin.register(ObservedField)
class ObservedFieldAdmin(admin.ModelAdmin):
    list_display = [
        "connector",
        "object_type",
        "name",
        "json_type",
        "last_seen",
        "seen_count",
    ]
    list_filter = ["connector", "object_type", "json_type"]
    search_fields = ["name"]


@admin.register(DriftFinding)
class DriftFindingAdmin(admin.ModelAdmin):
    list_display = [
        "connector",
        "object_type",
        "kind",
        "field_name",
        "blocking",
        "state",
    ]
    list_filter = ["state", "kind", "blocking", "connector"]
    search_fields = ["field_name", "new_name"]
    readonly_fields = ["reviewed_by", "reviewed_at"]


@admin.register(ReconciliationRun)
class ReconciliationRunAdmin(admin.ModelAdmin):
    list_display = ["pk", "state", "window_start", "window_end", "processed", "total"]
    list_filter = ["state"]
    readonly_fields = [
        "cursor",
        "processed",
        "matched",
        "mismatched",
        "missing",
        "orphaned",
    ]


@admin.register(ErpInvoiceSnapshot)
class ErpInvoiceSnapshotAdmin(admin.ModelAdmin):
    list_display = [
        "command",
        "invoice_number",
        "invoice_state",
        "invoice_total",
        "paid_on",
    ]
    list_filter = ["invoice_state", "destination"]
    search_fields = ["invoice_number"]
