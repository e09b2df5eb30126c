from django import forms
from django.contrib import admin, messages
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from meshline import lockout
from meshline.models import SCOPE_CHOICES, ApiToken, LoginThrottle


class ApiTokenForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=SCOPE_CHOICES,
        widget=forms.CheckboxSelectMultiple,
        help_text="What the token may do; its user's roles still apply.",
    )

    class Meta:
        model = ApiToken
        fields = ["user", "name", "scopes"]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are created here and shown once; afterwards only the prefix shows."""

    form = ApiTokenForm
    list_display = [
        "name",
        "user",
        "key_prefix",
        "scope_list",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]
    list_filter = ["revoked_at", "created_at"]
    search_fields = ["name", "user__username", "key_prefix"]
    readonly_fields = ["key_prefix", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke_tokens"]

    @admin.display(description="Scopes")
    def scope_list(self, obj):
        return ", ".join(obj.scopes or [])

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        # A saved token keeps its user; a new need gets a new token.
        return ["user", *self.readonly_fields]

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        if not change:
            request._meshline_new_token = obj.issue()
        super().save_model(request, obj, form, change)

    def response_add(self, request, obj, post_url_continue=None):
        token = getattr(request, "_meshline_new_token", None)
        if token is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "title": "API token created",
            "token": token,
            "token_object": obj,
            "changelist_url": reverse("admin:meshline_apitoken_changelist"),
        }
        response = TemplateResponse(
            request, "admin/meshline/apitoken/token_created.html", context
        )
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke selected tokens")
    def revoke_tokens(self, request, queryset):
        count = queryset.filter(revoked_at=None).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {count} token(s).", messages.SUCCESS)


@admin.register(LoginThrottle)
class LoginThrottleAdmin(admin.ModelAdmin):
    """Failed logins by user name and client IP; locked rows block every login."""

    list_display = [
        "kind",
        "value",
        "failures",
        "first_failure_at",
        "last_failure_at",
        "locked_until",
        "locked",
    ]
    list_filter = ["kind", "locked_until"]
    search_fields = ["value"]
    readonly_fields = [field.name for field in LoginThrottle._meta.fields]
    actions = ["unlock"]

    @admin.display(boolean=True, description="Locked now")
    def locked(self, obj):
        return obj.is_locked()

    def has_add_permission(self, request):
        return False

    @admin.action(description="Lift the lock-out and reset the count")
    def unlock(self, request, queryset):
        count = lockout.unlock(queryset)
        self.message_user(request, f"Lifted {count} lock-out(s).", messages.SUCCESS)
