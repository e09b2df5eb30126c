"""Reject UPDATE and DELETE on the ledger and the case history in PostgreSQL.

The ORM refuses them too, but a trigger also stops raw SQL, the admin's
bulk actions and QuerySet.update(). The one exception is the retention job:
with ``SET LOCAL meshline.allow_redaction = 'on'`` it may rewrite the payload
columns of the ledger (to remove personal fields), and nothing else.
"""

from django.db import migrations

FUNCTION = """
CREATE OR REPLACE FUNCTION meshline_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND TG_TABLE_NAME = 'syncflows_ledgerentry'
       AND current_setting('meshline.allow_redaction', true) = 'on'
       AND (to_jsonb(NEW) - 'payload_before' - 'payload_after')
           = (to_jsonb(OLD) - 'payload_before' - 'payload_after') THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
"""

TABLES = ["syncflows_ledgerentry", "exceptions_casehistory"]


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(FUNCTION, params=None)
    for table in TABLES:
        schema_editor.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION meshline_append_only()"
        )


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for table in TABLES:
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
    schema_editor.execute("DROP FUNCTION IF EXISTS meshline_append_only()")


class Migration(migrations.Migration):
    dependencies = [
        ("meshline", "0001_roles"),
        ("syncflows", "0001_initial"),
        ("exceptions", "0001_initial"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
