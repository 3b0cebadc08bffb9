"""Model versions aggregated before the DP noise came from the operating system had their noise seeded with
the round's id, which the version page showed as "DP noise seed": anyone who could open that page could
regenerate the noise and subtract it. Their privacy budget is marked void (not a guarantee) with the reason,
and the seed is taken out of their provenance. Each amended version is recorded in the audit log.

Self-contained on purpose: historical models, and the audit chain's hash function (not its live model)."""

from django.db import migrations
from django.utils import timezone

from consortium.audit.log import GENESIS_HASH, compute_hash, lock_chain, to_json

VOID_REASON = ("The DP noise of this model was generated from a predictable seed (the round's id, shown on its "
               "page): anyone who could read it could regenerate the noise and subtract it, recovering the "
               "noiseless mean. Its epsilon is no guarantee.")
EARLIER_REASON = ("An earlier model version of this study was released with predictable DP noise, so the "
                  "sites' data behind it was not protected; the cumulative budget is no guarantee.")
ACTION = "aggregation.model_version.provenance_amended"


def _amend(version, voided_studies: set[int]) -> dict | None:
    """The change to one version's provenance (mutating it), or None when there is nothing to change."""
    provenance = version.provenance or {}
    settings = (provenance.get("strategy") or {}).get("settings") or {}
    seeded = "dp_seed" in settings
    privacy = provenance.get("privacy")
    if not seeded and not (privacy and version.study_id in voided_studies and not privacy.get("void")):
        return None
    settings.pop("dp_seed", None)
    change = {"removed_dp_seed": seeded, "privacy_void": False}
    dp_on = float(settings.get("dp_noise_multiplier") or 0) > 0 or bool(privacy)
    if dp_on and privacy is not None:
        reason = VOID_REASON if seeded else EARLIER_REASON
        privacy.update(void=True, void_reason=reason)
        voided_studies.add(version.study_id)
        change.update(privacy_void=True, reason=reason)
    return change


def _record(AuditEvent, version, change: dict) -> None:
    """Append one event to the hash chain, as `consortium.audit.log.record` does, with the historical model."""
    lock_chain()
    last = AuditEvent.objects.order_by("-seq").values("seq", "hash").first()
    event = AuditEvent(
        seq=(last["seq"] + 1) if last else 1, created_at=timezone.now(), actor_kind="system", actor_user_id=None,
        actor_label="system", action=ACTION, outcome="ok", object_type="aggregation.modelversion",
        object_id=str(version.pk), object_repr=f"{version.study.title} v{version.number}"[:300],
        study_id=version.study_id, site_id=None, details=to_json({"version": version.number, **change}),
        prev_hash=last["hash"] if last else GENESIS_HASH,
    )
    event.hash = compute_hash(event)
    event.save(force_insert=True)


def void_predictable_noise(apps, schema_editor) -> None:
    ModelVersion = apps.get_model("aggregation", "ModelVersion")
    AuditEvent = apps.get_model("consortium", "AuditEvent")
    voided_studies: set[int] = set()
    for version in ModelVersion.objects.select_related("study").order_by("study_id", "number"):
        change = _amend(version, voided_studies)
        if change is None:
            continue
        version.save(update_fields=["provenance"])
        _record(AuditEvent, version, change)


class Migration(migrations.Migration):

    dependencies = [
        ("aggregation", "0002_sitestatistics_exclusion_reason"),
        ("consortium", "0002_audit_append_only_trigger"),
    ]

    operations = [
        migrations.RunPython(void_predictable_noise, migrations.RunPython.noop),
    ]
