from django.contrib import admin

from exceptions import models


@admin.register(models.Lane)
class LaneAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "owner_group", "sla_hours", "business_hours"]
    list_filter = ["business_hours", "owner_group"]
    search_fields = ["slug", "name"]


@admin.register(models.OwnershipRule)
class OwnershipRuleAdmin(admin.ModelAdmin):
    """Ownership rules. The rule with the most filled match fields wins; among
    equally specific rules the lower priority number wins, then the older rule.
    A case that no rule matches goes to the Triage Lead group."""

    list_display = [
        "__str__",
        "keyword",
        "business_unit",
        "destination",
        "reason_code",
        "owner_user",
        "owner_group",
        "lane",
        "priority",
    ]
    list_filter = ["lane", "reason_code", "business_unit", "destination"]
    search_fields = ["keyword", "business_unit", "reason_code"]
    fieldsets = [
        (
            "Match (empty fields match anything)",
            {
                "fields": ["keyword", "business_unit", "destination", "reason_code"],
                "description": (
                    "The rule with the most filled match fields wins. Among equally "
                    "specific rules the lower priority number wins, then the older "
                    "rule. A case no rule matches goes to the Triage Lead group."
                ),
            },
        ),
        (
            "Owner and lane",
            {"fields": ["owner_user", "owner_group", "lane", "priority"]},
        ),
    ]


class CaseHistoryInline(admin.TabularInline):
    model = models.CaseHistory
    extra = 0
    can_delete = False
    readonly_fields = ["at", "actor", "action", "from_state", "to_state", "note"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(models.ExceptionCase)
class ExceptionCaseAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "reason_code",
        "title",
        "state",
        "lane",
        "owner_user",
        "owner_group",
        "record_key",
        "due_at",
        "escalation_level",
    ]
    list_filter = ["state", "lane", "reason_code", "business_unit", "escalation_level"]
    search_fields = ["record_key", "title", "message"]
    readonly_fields = [f.name for f in models.ExceptionCase._meta.fields]
    inlines = [CaseHistoryInline]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(models.Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "case",
        "channel",
        "event",
        "status",
        "attempts",
        "created_at",
        "sent_at",
    ]
    list_filter = ["status", "channel", "event"]
    readonly_fields = [f.name for f in models.Notification._meta.fields]

    def has_add_permission(self, request):
        return False


@admin.register(models.BulkAction)
class BulkActionAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "action",
        "state",
        "requested_by",
        "total",
        "done",
        "skipped",
        "created_at",
    ]
    list_filter = ["action", "state"]
    readonly_fields = [f.name for f in models.BulkAction._meta.fields]

    def has_add_permission(self, request):
        return False
