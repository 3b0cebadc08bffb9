"""On PostgreSQL, refuse UPDATE and DELETE of audit events in the database itself, so that even
code (or a person) bypassing the application cannot rewrite history. SQLite relies on the model."""

from django.db import migrations

FORWARD = """
CREATE OR REPLACE FUNCTION consortium_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only: % refused on consortium_auditevent', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER consortium_audit_append_only
    BEFORE UPDATE OR DELETE ON consortium_auditevent
    FOR EACH ROW EXECUTE FUNCTION consortium_audit_append_only();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS consortium_audit_append_only ON consortium_auditevent;
DROP FUNCTION IF EXISTS consortium_audit_append_only();
"""


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FORWARD, params=None)


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(BACKWARD, params=None)


class Migration(migrations.Migration):
    dependencies = [("consortium", "0001_initial")]
    operations = [migrations.RunPython(forward, backward)]
