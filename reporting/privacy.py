"""Data protection: payload retention and data-subject export and erasure.

Personal fields are names, e-mail addresses, phone numbers and postal
addresses of people and of the companies they work for. Their values are
replaced by ``REMOVED``, so amounts, ids, dates, stages and outcomes stay
for reporting and the shape of each payload stays readable. The keys are
listed per connector kind in ``PERSONAL_KEYS``; ``PERSONAL_PATTERN`` catches
the same kinds of field under other names.

The ledger is append-only. Its payload columns are rewritten here only, in a
transaction that sets ``meshline.allow_redaction`` so that the PostgreSQL
trigger lets exactly those two columns change.
"""

import json
import logging
import re
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from exceptions.models import ExceptionCase
from meshline.models import UsedSignature
from meshline.roles import require
from syncflows.connectors.signing import TOLERANCE_SECONDS
from syncflows.models import (
    Command,
    Delivery,
    InboundEvent,
    LedgerEntry,
    RecordChange,
    SourceRecord,
    SyncRun,
)
from syncflows.services import ledger
from syncflows.services.trace import matching_records

logger = logging.getLogger(__name__)

REMOVED = "[removed]"
DONE_STATES = [
    Command.State.SUCCEEDED,
    Command.State.SUPERSEDED,
    Command.State.COMPENSATED,
]
BATCH = 500

# Exact keys (compared case-insensitively) that hold personal data, per kind.
PERSONAL_KEYS = {
    "pipedrive": {
        "person_name",
        "owner_name",
        "cc_email",
        "org_name",
        "creator_user_name",
        "user_name",
        "person_email",
        "person_phone",
    },
    "hubspot": {
        "firstname",
        "lastname",
        "email",
        "phone",
        "mobilephone",
        "address",
        "city",
        "zip",
        "hubspot_owner_name",
        "company",
    },
    # Name is personal on Contact, Lead and Account; on an Opportunity it is
    # often the customer's name too, so it is removed for every object.
    "salesforce_cdc": {"name", "firstname", "lastname", "email", "phone"},
    "salesforce_outbound": {
        "name",
        "firstname",
        "lastname",
        "email",
        "phone",
        "sessionid",
    },
    "generic": {"customer_name", "contact_name", "contact_email"},
    # Commands and their results, as mapped by briefs.
    "command": {"name", "customer_name", "contact", "customer_po"},
}
ALL_PERSONAL_KEYS = set().union(*PERSONAL_KEYS.values())
PERSONAL_PATTERN = re.compile(
    r"e-?mail|phone|mobile|fax|street|address|postal|post_?code|zip_?code"
    r"|first_?name|last_?name|full_?name|person_?name|owner_?name|contact_?name",
    re.IGNORECASE,
)
# Blocks about a person whose ids stay while their personal values go.
CONTAINER_KEYS = {"contact", "person", "owner", "customer"}
# HubSpot sends one property per event as propertyName/propertyValue.
PROPERTY_NAME_KEYS = ("propertyName", "property_name")
PROPERTY_VALUE_KEYS = ("propertyValue", "property_value")


def is_personal(key: str, keys=ALL_PERSONAL_KEYS) -> bool:
    return key.lower() in keys or bool(PERSONAL_PATTERN.search(key))


class Redactor:
    """Replace personal values in JSON-like data and count the replacements."""

    def __init__(self, kind: str | None = None):
        self.keys = PERSONAL_KEYS.get(kind, set()) | PERSONAL_KEYS["command"]
        if kind is None:
            self.keys = ALL_PERSONAL_KEYS
        self.removed = 0

    def redact(self, value):
        if isinstance(value, list):
            return [self.redact(item) for item in value]
        if not isinstance(value, dict):
            return value
        result = {}
        for key, item in value.items():
            if str(key).lower() in CONTAINER_KEYS and isinstance(item, dict):
                result[key] = self.redact(item)
            elif is_personal(str(key), self.keys) and item not in (None, "", REMOVED):
                result[key] = REMOVED
                self.removed += 1
            else:
                result[key] = self.redact(item)
        return self._redact_property_pair(result)

    def _redact_property_pair(self, value: dict) -> dict:
        name = next((value[k] for k in PROPERTY_NAME_KEYS if k in value), None)
        if not isinstance(name, str) or not is_personal(name, self.keys):
            return value
        for key in PROPERTY_VALUE_KEYS:
            if value.get(key) not in (None, "", REMOVED):
                value[key] = REMOVED
                self.removed += 1
        return value

    def redact_body(self, body: bytes) -> bytes:
        """Return a JSON body with personal values removed; any other body is
        emptied, because its fields cannot be told apart safely."""
        if not body:
            return body
        try:
            data = json.loads(bytes(body).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            self.removed += 1
            return b""
        before = self.removed
        redacted = self.redact(data)
        if self.removed == before:
            return body
        return json.dumps(redacted, ensure_ascii=False).encode("utf-8")


def _allow_ledger_redaction() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL meshline.allow_redaction = 'on'")


def _connector_kind(obj) -> str | None:
    connector = getattr(obj, "connector", None)
    return connector.kind if connector is not None else None


def _redact_rows(
    queryset, fields, kind_of=_connector_kind, dry_run=False
) -> tuple[int, int]:
    """Redact ``fields`` of every row; return (rows changed, values removed)."""
    rows = values = 0
    changed = []
    model = queryset.model
    for obj in queryset.iterator(chunk_size=BATCH):
        redactor = Redactor(kind_of(obj))
        for name in fields:
            current = getattr(obj, name)
            if name == "body":
                setattr(obj, name, redactor.redact_body(current))
            elif current is not None:
                setattr(obj, name, redactor.redact(current))
        if redactor.removed:
            rows += 1
            values += redactor.removed
            changed.append(obj)
        if len(changed) >= BATCH:
            _save(model, changed, fields, dry_run)
            changed = []
    _save(model, changed, fields, dry_run)
    return rows, values


def _save(model, objects, fields, dry_run) -> None:
    if dry_run or not objects:
        return
    with transaction.atomic():
        if model is LedgerEntry:
            _allow_ledger_redaction()
        model.objects.bulk_update(objects, fields)


def _targets(cutoff):
    """The rows older than ``cutoff`` and the fields whose personal data goes."""
    return {
        "deliveries": (
            Delivery.objects.filter(received_at__lt=cutoff).select_related("connector"),
            ["body"],
        ),
        "events": (
            InboundEvent.objects.filter(received_at__lt=cutoff).select_related(
                "connector"
            ),
            ["payload"],
        ),
        "changes": (
            RecordChange.objects.filter(created_at__lt=cutoff).select_related(
                "record__connector"
            ),
            ["state", "previous"],
        ),
        "runs": (SyncRun.objects.filter(created_at__lt=cutoff), ["payload"]),
        # Only commands that can never be sent again: a failed or held one may
        # still be retried from its case, and needs the customer's name then.
        "commands": (
            Command.objects.filter(updated_at__lt=cutoff, state__in=DONE_STATES),
            ["payload", "result"],
        ),
        "ledger": (
            LedgerEntry.objects.filter(created_at__lt=cutoff).select_related(
                "connector"
            ),
            ["payload_before", "payload_after"],
        ),
        "cases": (
            ExceptionCase.objects.filter(closed_at__lt=cutoff),
            ["detail"],
        ),
    }


def _kind_for(name):
    if name == "changes":
        return lambda obj: obj.record.connector.kind
    if name in ("runs", "commands", "cases"):
        return lambda obj: "command"
    return _connector_kind


def run_retention(*, acting_user=None, dry_run=False, now=None) -> dict:
    """Remove personal fields from payloads older than MESHLINE_RETENTION_DAYS.

    Returns, per kind of row, how many rows changed and how many values were
    removed. ``acting_user`` None means the schedule runs it."""
    if acting_user is not None:
        require(acting_user, "run_retention")
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.MESHLINE_RETENTION_DAYS)
    report = {}
    for name, (queryset, fields) in _targets(cutoff).items():
        rows, values = _redact_rows(queryset, fields, _kind_for(name), dry_run)
        report[name] = {"rows": rows, "values": values}
    report["used_signatures"] = {
        "rows": purge_used_signatures(now, dry_run),
        "values": 0,
    }
    logger.info(
        "Retention %s: cutoff %s, %s",
        "dry run" if dry_run else "run",
        cutoff.isoformat(),
        ", ".join(f"{name} {item['rows']}" for name, item in report.items()),
    )
    if not dry_run and any(item["rows"] for item in report.values()):
        ledger.write(
            LedgerEntry.Step.ACTION,
            f"Retention removed personal fields older than {cutoff.date().isoformat()}: "
            + ", ".join(f"{item['rows']} {name}" for name, item in report.items()),
            actor=acting_user,
        )
    return report


def purge_used_signatures(now, dry_run=False) -> int:
    """Forget signatures older than twice the window; their timestamps expired."""
    old = UsedSignature.objects.filter(
        seen_at__lt=now - timedelta(seconds=2 * TOLERANCE_SECONDS)
    )
    if dry_run:
        return old.count()
    deleted, _ = old.delete()
    return deleted


def retention_task() -> dict:
    """The daily schedule's entry point."""
    return run_retention()


# Data-subject requests.


def subject_records(query: str) -> list[SourceRecord]:
    """Return the source records that a CRM record id, record key or ERP number names."""
    records = list(
        matching_records(query).select_related("connector").order_by("record_key")
    )
    if not records:
        raise LookupError(
            f"No CRM record matches {query!r}: pass a CRM record id, a record key "
            "such as hubspot:deal:900000001, or an ERP document number."
        )
    return records


def _record_rows(record: SourceRecord) -> dict:
    events = InboundEvent.objects.filter(
        connector__in=_namespace_connectors(record),
        object_type=record.object_type,
        record_id=record.record_id,
    ).select_related("connector")
    return {
        "events": events,
        "deliveries": Delivery.objects.filter(
            pk__in=events.values("delivery_id")
        ).select_related("connector"),
        "changes": RecordChange.objects.filter(record=record).select_related(
            "record__connector"
        ),
        "runs": SyncRun.objects.filter(record=record),
        "commands": Command.objects.filter(record=record),
        "ledger": LedgerEntry.objects.filter(
            Q(record_key=record.record_key)
            | Q(event__in=events)
            | Q(delivery__in=events.values("delivery_id"))
        ).select_related("connector"),
        "cases": ExceptionCase.objects.filter(record_key=record.record_key),
    }


def _namespace_connectors(record):
    from syncflows.models import Connector

    namespace = record.connector.record_namespace
    return Connector.objects.filter(
        Q(slug=namespace, namespace="") | Q(namespace=namespace)
    )


def export_subject(query: str, *, acting_user) -> dict:
    """Collect everything Meshline holds about the CRM records ``query`` names."""
    require(acting_user, "export_subject")
    exported = []
    for record in subject_records(query):
        rows = _record_rows(record)
        exported.append(
            {
                "record_key": record.record_key,
                "record": {
                    "state": record.state,
                    "revision": record.revision,
                    "is_deleted": record.is_deleted,
                    "aliases": list(record.aliases.values_list("alias_key", flat=True)),
                },
                "deliveries": [_delivery_json(d) for d in rows["deliveries"]],
                "events": list(
                    rows["events"].values(
                        "id", "crm_event_id", "event_type", "occurred_at", "payload"
                    )
                ),
                "changes": list(
                    rows["changes"].values(
                        "id", "change_type", "occurred_at", "state", "previous"
                    )
                ),
                "commands": list(
                    rows["commands"].values(
                        "id",
                        "idempotency_key",
                        "command_type",
                        "state",
                        "payload",
                        "result",
                        "erp_document_number",
                    )
                ),
                "ledger": list(
                    rows["ledger"].values(
                        "id",
                        "created_at",
                        "step",
                        "message",
                        "payload_before",
                        "payload_after",
                    )
                ),
                "cases": list(
                    rows["cases"].values(
                        "id", "state", "title", "message", "detail", "resolution_note"
                    )
                ),
            }
        )
    ledger.write(
        LedgerEntry.Step.ACTION,
        f"{acting_user} exported the data held on {len(exported)} record(s) for a "
        "data-subject request.",
        record_key=exported[0]["record_key"] if len(exported) == 1 else "",
        actor=acting_user,
    )
    logger.info(
        "User %s exported %s record(s) for a data-subject request",
        acting_user.pk,
        len(exported),
    )
    return {
        "query": query,
        "exported_at": timezone.now().isoformat(),
        "records": exported,
    }


def _delivery_json(delivery) -> dict:
    return {
        "id": delivery.pk,
        "received_at": delivery.received_at.isoformat(),
        "status": delivery.status,
        "content_type": delivery.content_type,
        "body": bytes(delivery.body).decode("utf-8", "replace"),
    }


ERASE_FIELDS = {
    "deliveries": ["body"],
    "events": ["payload"],
    "changes": ["state", "previous"],
    "runs": ["payload"],
    "commands": ["payload", "result"],
    "ledger": ["payload_before", "payload_after"],
    "cases": ["detail"],
}


def erase_subject(query: str, *, acting_user) -> dict:
    """Remove the personal fields of the records ``query`` names, everywhere.

    A delivery that carried a batch loses the personal fields of every record
    in it, because its body is stored as one document."""
    require(acting_user, "erase_subject")
    report = {name: {"rows": 0, "values": 0} for name in ["records", *ERASE_FIELDS]}
    for record in subject_records(query):
        for name, queryset in _record_rows(record).items():
            rows, values = _redact_rows(queryset, ERASE_FIELDS[name], _kind_for(name))
            report[name]["rows"] += rows
            report[name]["values"] += values
        rows, values = _redact_rows(
            SourceRecord.objects.filter(pk=record.pk).select_related("connector"),
            ["state"],
        )
        report["records"]["rows"] += rows
        report["records"]["values"] += values
        ledger.write(
            LedgerEntry.Step.ACTION,
            f"{acting_user} erased the personal fields of {record.record_key} for a "
            "data-subject request.",
            record_key=record.record_key,
            actor=acting_user,
        )
    logger.info(
        "User %s erased personal fields for a data-subject request", acting_user.pk
    )
    return report
