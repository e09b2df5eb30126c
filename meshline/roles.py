"""Roles and the permission policy that pages, the API and commands share.

A role is a Django group. Superusers hold every role. Views and API endpoints
ask ``has_role`` or ``require_role`` instead of checking groups themselves, so
the rules live in one place.
"""

from django.core.exceptions import PermissionDenied

SALES_OPS = "Sales Ops"
FINANCE = "Finance"
PRICING_OPS = "Pricing Ops"
MASTER_DATA = "Master Data"
TRIAGE_LEAD = "Triage Lead"
ADMIN = "Admin"
VIEWER = "Viewer"

ALL_ROLES = [SALES_OPS, FINANCE, PRICING_OPS, MASTER_DATA, TRIAGE_LEAD, ADMIN, VIEWER]

# Actions and the roles allowed to take them.
POLICY = {
    "view": set(ALL_ROLES),
    "triage_case": {FINANCE, PRICING_OPS, MASTER_DATA, TRIAGE_LEAD, ADMIN},
    "replay_event": {SALES_OPS, FINANCE, TRIAGE_LEAD, ADMIN},
    "retry_command": {FINANCE, TRIAGE_LEAD, ADMIN},
    # Applying a suggested fix (a lookup row, a customer link) and retrying in
    # one step: the lane owners who know the data may do it.
    "fix_case": {FINANCE, PRICING_OPS, MASTER_DATA, TRIAGE_LEAD, ADMIN},
    "edit_configuration": {ADMIN},
    # Brief lifecycle: who writes versions and who releases approved ones.
    # Approving a side is tied to its role (Sales Ops: CRM, Finance: ERP).
    "edit_brief": {SALES_OPS, ADMIN},
    "release_brief": {SALES_OPS, FINANCE, ADMIN},
    # Sending or importing CRM deliveries with an API token or a command.
    "ingest": {SALES_OPS, ADMIN},
    # Data protection: the retention job and data-subject export and erasure.
    "run_retention": {ADMIN},
    "export_subject": {ADMIN},
    "erase_subject": {ADMIN},
}


def user_roles(user) -> set[str]:
    if not user.is_authenticated:
        return set()
    if user.is_superuser:
        return set(ALL_ROLES)
    cached = getattr(user, "_meshline_roles", None)
    if cached is None:
        cached = set(user.groups.values_list("name", flat=True))
        user._meshline_roles = cached
    return cached


def has_role(user, *roles: str) -> bool:
    return bool(user_roles(user) & set(roles))


def can(user, action: str) -> bool:
    return bool(user_roles(user) & POLICY[action])


def require(user, action: str) -> None:
    if not can(user, action):
        allowed = ", ".join(sorted(POLICY[action]))
        raise PermissionDenied(f"This action needs one of these roles: {allowed}.")


def roles_context(request):
    roles = user_roles(request.user)
    return {"user_roles": roles, "is_meshline_admin": ADMIN in roles}
