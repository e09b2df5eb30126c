"""Demo lanes and ownership rules, loaded by ``manage.py load_demo``."""

from django.contrib.auth.models import Group
from django.db import transaction

from exceptions.models import Lane, OwnershipRule
from meshline import roles

# slug, name, owner group, SLA hours, business hours, reason codes, description
LANES = [
    ("pricing", "Pricing", roles.PRICING_OPS, 8, True, [],
     "Discounts, price books and quote totals."),
    ("master-data", "Master data", roles.MASTER_DATA, 8, True,
     ["mapping_missing", "master_data_missing"],
     "Missing SKU mappings, customers and currencies."),
    ("erp-rejections", "ERP rejections", roles.FINANCE, 4, True,
     ["erp_rejected", "erp_unavailable", "rate_limited", "auth_failed",
      "schema_invalid"],
     "Documents the ERP refused or could not take."),
    ("reconciliation", "Reconciliation mismatches", roles.FINANCE, 24, True,
     ["acceptance_failed", "idempotency_conflict"],
     "Totals that differ between the CRM and the ERP."),
    ("drift", "Drift", roles.SALES_OPS, 24, False, ["drift_blocked", "stale_event"],
     "CRM fields that changed shape under a brief."),
    ("triage", "Triage", roles.TRIAGE_LEAD, 4, False, [],
     "Cases no rule claims, and breached cases."),
]  # fmt: skip

# keyword, business unit, reason code, lane, owner group, priority
RULES = [
    ("discounts", "", "acceptance_failed", "pricing", roles.PRICING_OPS, 100),
    ("CPQ", "", "mapping_missing", "master-data", roles.MASTER_DATA, 100),
    ("", "", "mapping_missing", "master-data", roles.MASTER_DATA, 100),
    ("", "", "master_data_missing", "master-data", roles.MASTER_DATA, 100),
    ("subscription-change", "", "", "reconciliation", roles.FINANCE, 100),
    ("", "", "erp_rejected", "erp-rejections", roles.FINANCE, 100),
    ("", "", "acceptance_failed", "reconciliation", roles.FINANCE, 100),
    ("", "", "idempotency_conflict", "reconciliation", roles.FINANCE, 100),
    ("", "", "drift_blocked", "drift", roles.SALES_OPS, 100),
]  # fmt: skip


@transaction.atomic
def load_demo_lanes() -> dict[str, Lane]:
    """Create or update the demo lanes and ownership rules; return the lanes."""
    groups = {
        name: Group.objects.get_or_create(name=name)[0] for name in roles.ALL_ROLES
    }
    lanes = {}
    for slug, name, group, hours, business, reasons, description in LANES:
        lanes[slug], _ = Lane.objects.update_or_create(
            slug=slug,
            defaults={
                "name": name,
                "owner_group": groups[group],
                "sla_hours": hours,
                "business_hours": business,
                "reason_codes": reasons,
                "description": description,
            },
        )
    for keyword, unit, reason, lane, group, priority in RULES:
        OwnershipRule.objects.update_or_create(
            keyword=keyword,
            business_unit=unit,
            destination=None,
            reason_code=reason,
            defaults={
                "lane": lanes[lane],
                "owner_group": groups[group],
                "priority": priority,
            },
        )
    return lanes
