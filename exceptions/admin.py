from django.contrib import admin

from exceptions import models


@admin.register(models.Lane)
class LaneAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "owner_group", "sla_hours", "business_hours"]
    search_fields = ["slug", "name"]


@admin.register(models.OwnershipRule)
class OwnershipRuleAdmin(admin.ModelAdmin):
    list_display = ["__str__", "keyword", "business_unit", "destination", "reason_code", "owner_user", "owner_group", "lane", "priority"]
    list_filter = ["lane", "reason_code", "business_unit", "destination"]
    search_fields = ["keyword", "business_unit", "reason_code"]


class CaseHistoryInline(admin.TabularInline):
    model = models.CaseHistory
    extra = 0
    can_delete = False
    readonly_fields = ["at", "actor", "action", "from_state", "to_state", "note"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(models.ExceptionCase)
class ExceptionCaseAdmin(admin.ModelAdmin):
    list_display = ["id", "reason_code", "title", "state", "lane", "owner_user", "owner_group", "record_key", "due_at"]
    list_filter = ["state", "lane", "reason_code", "business_unit"]
    search_fields = ["record_key", "title", "message"]
    readonly_fields = [f.name for f in models.ExceptionCase._meta.fields]
    inlines = [CaseHistoryInline]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
