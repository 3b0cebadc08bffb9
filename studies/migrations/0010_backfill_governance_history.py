"""Give every governed row that predates its history table a history, dated at the moments its own columns
prove. What no column proves is not invented: before the first dated record a row did not exist as far as
the gate as of a moment can tell (never eligible there); between a study's creation and its last save it
reads as a draft, and between a participation's invitation and its last decision as invited: not eligible,
the conservative answer."""

from django.db import migrations

# Per model: the column dating its current state, and (optionally) an earlier column with the state then.
CURRENT_DATE = {
    "Study": "updated_at", "AgreementVersion": "created_at", "AgreementSignature": "signed_at", "Dpia": "updated_at",
    "EthicsApproval": "recorded_at", "Participation": "decided_at", "Approval": "voided_at",
}
EARLIER = {
    # (column dating the earlier state, the fields as they were then)
    "Study": ("created_at", {"status": "draft", "status_reason": "", "status_changed_at": None,
                             "status_changed_by_id": None}),
    "Participation": ("invited_at", {"status": "invited", "decided_by_id": None, "decided_at": None, "reason": ""}),
    "Approval": ("decided_at", {"voided_at": None, "void_reason": ""}),
}


def backfill(apps, schema_editor):
    for name, column in CURRENT_DATE.items():
        model, history = apps.get_model("studies", name), apps.get_model("studies", f"Historical{name}")
        fields = [field.attname for field in model._meta.concrete_fields]
        rows = []
        for row in model.objects.all().iterator():
            if history.objects.filter(id=row.pk).exists():
                continue
            values = {attname: getattr(row, attname) for attname in fields}
            earlier = EARLIER.get(name)
            since, when = (getattr(row, earlier[0]) if earlier else None), getattr(row, column)
            # `when` None: the earlier state is the current one (still invited, never voided).
            earlier_known = since is not None and (when is None or when > since)
            if earlier_known:
                rows.append(history(**{**values, **earlier[1]}, history_date=since, history_type="+"))
            if when is not None:
                rows.append(history(**values, history_date=when, history_type="~" if earlier_known else "+"))
        history.objects.bulk_create(rows, batch_size=500)


class Migration(migrations.Migration):
    dependencies = [("studies", "0009_governance_history")]

    operations = [migrations.RunPython(backfill, migrations.RunPython.noop)]
