"""Fill each study's privacy ledger (`Study.privacy_ledger`) from the training rounds it already released, so
the gate's privacy-budget check counts them: per closed training round with a model version, the DP noise
multiplier that version's provenance records; 0 for a round without noise, and 0 too for a version whose
budget is void (its noise was predictable, see 0003: anyone could remove it). Each filled ledger is recorded
in the audit log.

Self-contained on purpose: historical models, and the audit chain's hash function (not its live model)."""

from django.db import migrations
from django.utils import timezone

from consortium.audit.log import GENESIS_HASH, compute_hash, lock_chain, to_json

ACTION = "studies.privacy.ledger_filled"


def _noise_multiplier(provenance: dict) -> float:
    if (provenance.get("privacy") or {}).get("void"):
        return 0.0
    settings = (provenance.get("strategy") or {}).get("settings") or {}
    return float(settings.get("dp_noise_multiplier") or 0.0)


def _record(AuditEvent, study, ledger: dict) -> None:
    """Append one event to the hash chain, as `consortium.audit.record` does, with the historical model."""
    lock_chain()
    last = AuditEvent.objects.order_by("-seq").values("seq", "hash").first()
    event = AuditEvent(
        seq=(last["seq"] + 1) if last else 1, created_at=timezone.now(), actor_kind="system", actor_user_id=None,
        actor_label="system", action=ACTION, outcome="ok", object_type="studies.study", object_id=str(study.pk),
        object_repr=study.title[:300], study_id=study.pk, site_id=None,
        details=to_json({"privacy_ledger": ledger, "rounds": sum(ledger.values())}),
        prev_hash=last["hash"] if last else GENESIS_HASH,
    )
    event.hash = compute_hash(event)
    event.save(force_insert=True)


def fill_ledgers(apps, schema_editor) -> None:
    Study = apps.get_model("studies", "Study")
    ModelVersion = apps.get_model("aggregation", "ModelVersion")
    AuditEvent = apps.get_model("consortium", "AuditEvent")
    ledgers: dict[int, dict[str, int]] = {}
    released = ModelVersion.objects.filter(round__kind="training", round__status="closed").only("study", "provenance")
    for version in released.order_by("study_id", "number"):
        key = repr(_noise_multiplier(version.provenance or {}))
        ledger = ledgers.setdefault(version.study_id, {})
        ledger[key] = ledger.get(key, 0) + 1
    for study in Study.objects.filter(pk__in=ledgers).order_by("pk"):
        study.privacy_ledger = ledgers[study.pk]
        study.save(update_fields=["privacy_ledger"])
        _record(AuditEvent, study, ledgers[study.pk])


class Migration(migrations.Migration):
    dependencies = [
        ("aggregation", "0006_flower"),
        ("studies", "0011_privacy_target_and_disclosure"),
        ("consortium", "0002_audit_append_only_trigger"),
    ]

    operations = [migrations.RunPython(fill_ledgers, migrations.RunPython.noop)]
