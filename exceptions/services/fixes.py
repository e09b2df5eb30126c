"""Suggested fixes by reason code, and the fix-then-retry actions.

``fix_for(case)`` describes what the case page offers: a form that adds the
missing lookup row (``mapping_missing``), a form that creates or links the
customer (``master_data_missing``), the expected and actual values side by
side (``acceptance_failed``), or the ERP's answer in plain words
(``erp_rejected``). Applying a fix and retrying is one action for the user:
the fix commits first, so that a refused retry does not lose it.
"""

import logging

from django.db import transaction

from exceptions.models import CaseHistory, ExceptionCase
from exceptions.services.actions import (
    ActionRefused,
    replay_case,
    retry_case,
    with_case_log_context,
)
from meshline.roles import require
from syncflows.models import (
    Destination,
    LedgerEntry,
    LookupRow,
    LookupTable,
    SandboxCustomer,
    SandboxProduct,
)
from syncflows.services import ledger

logger = logging.getLogger(__name__)

MAX_CHOICES = 200


def fix_for(case) -> dict | None:
    """Return what the case page shows as the suggested fix, or None."""
    builder = BUILDERS.get(case.reason_code)
    return builder(case) if builder and case.detail is not None else None


def _mapping_fix(case) -> dict | None:
    detail = case.detail or {}
    table = LookupTable.objects.filter(slug=detail.get("table") or "").first()
    if table is None:
        return None
    key = detail.get("key")
    if key is None and detail.get("skus"):
        # The ERP rejected a mapped value: offer to change the row that maps to it.
        unknown = detail["skus"][0]
        row = LookupRow.objects.filter(table=table, value=unknown).first()
        key = row.key if row else unknown
    if not key:
        return None
    current = LookupRow.objects.filter(table=table, key=key).values_list(
        "value", flat=True
    )
    suggestions = SandboxProduct.objects.filter(is_active=True).order_by("code")
    return {
        "kind": "lookup",
        "table": table,
        "key": str(key),
        "current_value": current.first(),
        "suggestions": sorted(
            set(suggestions.values_list("code", flat=True)[:MAX_CHOICES])
        ),
    }


def _customer_fix(case) -> dict | None:
    reference = (case.detail or {}).get("customer_reference")
    destination = case.destination
    if not reference or destination is None or destination.adapter != "sandbox":
        # NOTE: only the sandbox ERP can create or link customers from here;
        # other adapters show the suggested fix in words.
        return None
    customers = SandboxCustomer.objects.filter(destination=destination).order_by("name")
    name = ((case.detail.get("payload") or {}).get("customer") or {}).get("name")
    return {
        "kind": "customer",
        "reference": reference,
        "destination": destination,
        "name": name or "",
        "customers": list(customers[:MAX_CHOICES]),
    }


def _compare_fix(case) -> dict | None:
    detail = case.detail or {}
    if "expected" not in detail and "actual" not in detail:
        return None
    return {
        "kind": "compare",
        "check": detail.get("check") or "Acceptance check",
        "expected": detail.get("expected"),
        "actual": detail.get("actual"),
        "differs": detail.get("expected") != detail.get("actual"),
    }


def _erp_message_fix(case) -> dict:
    detail = case.detail or {}
    errors = detail.get("field_errors") or {}
    if isinstance(errors, dict):
        field_errors = sorted((str(name), str(text)) for name, text in errors.items())
    else:
        field_errors = [("", str(item)) for item in errors]
    return {
        "kind": "erp_message",
        "message": case.message,
        "field_errors": field_errors,
        "status": detail.get("status"),
        "body": detail.get("body"),
    }


BUILDERS = {
    "mapping_missing": _mapping_fix,
    "master_data_missing": _customer_fix,
    "acceptance_failed": _compare_fix,
    "erp_rejected": _erp_message_fix,
}


def _require_fix_roles(user) -> None:
    require(user, "fix_case")


def _refuse_closed(case) -> None:
    if not case.is_open:
        raise ActionRefused(
            f"Case {case.pk} is {case.get_state_display().lower()}, "
            "so no fix is needed."
        )


def _record_fix(case, user, note: str) -> None:
    CaseHistory.objects.create(
        case=case,
        actor=user,
        action="fix_applied",
        from_state=case.state,
        to_state=case.state,
        note=note,
    )
    ledger.write(
        LedgerEntry.Step.ACTION,
        f"{user} applied a fix on case {case.pk}: {note}",
        record_key=case.record_key,
        case_id=case.pk,
        command_id=case.command_id,
        actor=user,
    )
    logger.info("Fix applied on case %s by user %s", case.pk, user.pk)


def _retry_after_fix(case, user) -> ExceptionCase:
    """Retry, or replay when the failed command holds the old mapped value."""
    if case.reason_code == "mapping_missing" and case.command_id:
        return replay_case(case, acting_user=user, permission="fix_case")
    return retry_case(case, acting_user=user, permission="fix_case")


@with_case_log_context
def add_lookup_row_and_retry(
    case, *, acting_user, key: str, value: str
) -> ExceptionCase:
    """Add or change the lookup row the case is missing, then retry the case."""
    _require_fix_roles(acting_user)
    fix = _mapping_fix(case)
    if fix is None:
        raise ActionRefused(
            f"Case {case.pk} names no lookup table that can be fixed here."
        )
    value = value.strip()
    if not value:
        raise ActionRefused("Enter the ERP value that the key should map to.")
    with transaction.atomic():
        case = ExceptionCase.objects.select_for_update().get(pk=case.pk)
        _refuse_closed(case)
        row = LookupRow.objects.filter(table=fix["table"], key=key).first()
        if row is None:
            LookupRow.objects.create(table=fix["table"], key=key, value=value)
            note = f"Added {fix['table'].slug}[{key}] = {value}."
        else:
            old, row.value = row.value, value
            row.save(update_fields=["value", "updated_at"])
            note = f"Changed {fix['table'].slug}[{key}] from {old} to {value}."
        _record_fix(case, acting_user, note)
    return _retry_after_fix(case, acting_user)


@with_case_log_context
def add_customer_and_retry(
    case, *, acting_user, name: str = "", link_to=None
) -> ExceptionCase:
    """Create the missing ERP customer, or link the CRM reference to one, then retry.

    Linking gives the CRM reference its own customer row with the linked
    customer's name, because a sandbox customer has one reference.
    """
    _require_fix_roles(acting_user)
    fix = _customer_fix(case)
    if fix is None:
        raise ActionRefused(
            f"Case {case.pk} names no customer that can be created here."
        )
    destination: Destination = fix["destination"]
    if link_to is not None and link_to.destination_id != destination.pk:
        raise ActionRefused(f"Customer {link_to} belongs to another ERP destination.")
    name = (link_to.name if link_to is not None else name).strip() or fix["reference"]
    with transaction.atomic():
        case = ExceptionCase.objects.select_for_update().get(pk=case.pk)
        _refuse_closed(case)
        _customer, created = SandboxCustomer.objects.get_or_create(
            destination=destination, reference=fix["reference"], defaults={"name": name}
        )
        verb = "Linked" if link_to is not None else "Created"
        if not created:
            verb = "Found existing"
        _record_fix(
            case,
            acting_user,
            f"{verb} customer {name} for {fix['reference']} in {destination.name}.",
        )
    return retry_case(case, acting_user=acting_user, permission="fix_case")
