"""The ledger and case history cannot be changed or deleted, even in raw SQL."""

import pytest
from django.db import DatabaseError, connection, transaction

from syncflows.models import LedgerEntry

pytestmark = pytest.mark.django_db


def test_ledger_save_twice_raises():
    entry = LedgerEntry.objects.create(step="receive", message="first")
    entry.message = "changed"
    with pytest.raises(TypeError):
        entry.save()


def test_ledger_queryset_update_rejected():
    LedgerEntry.objects.create(step="receive", message="first")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        LedgerEntry.objects.update(message="changed")
    assert LedgerEntry.objects.get().message == "first"


def test_ledger_raw_delete_rejected():
    LedgerEntry.objects.create(step="receive", message="first")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM syncflows_ledgerentry")
    assert LedgerEntry.objects.count() == 1


def test_case_history_update_rejected():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'exceptions_casehistory'::regclass"
        )
        names = [row[0] for row in cursor.fetchall()]
    assert "exceptions_casehistory_append_only" in names


def test_redaction_may_rewrite_payloads_only():
    entry = LedgerEntry.objects.create(
        step="receive", message="first", payload_after={"name": "Test Person"}
    )
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL meshline.allow_redaction = 'on'")
        LedgerEntry.objects.filter(pk=entry.pk).update(payload_after={"name": None})
    assert LedgerEntry.objects.get().payload_after == {"name": None}
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL meshline.allow_redaction = 'on'")
        LedgerEntry.objects.filter(pk=entry.pk).update(message="changed")
