"""The model card of a model version: what a PI puts in a publication or a CE/MDR file, assembled from what
is recorded (the version's provenance, the study as it stood when the round aggregated, the ledger, the
sites' evaluation). Read-only: the reader's access is recorded by the view or API that shows it."""

from datetime import datetime
from typing import Any

from aggregation.ledger import study_ledger, totals
from aggregation.models import ModelVersion
from aggregation.selectors import model_version_get
from sites.models import Site
from studies.history import instance_as_of
from studies.models import Study

# Never a noise seed, even one left in an old provenance: it would let a reader remove the DP noise.
HIDDEN_SETTING = "seed"


def model_card(study: Study, number: int) -> dict[str, Any]:
    """Version `number`'s card (NotFound if the study has no such version)."""
    version = model_version_get(study, number)
    provenance = version.provenance or {}
    round_ = version.round
    aggregated_at = round_.aggregation_started_at if round_ else None
    then = instance_as_of(study, aggregated_at) if aggregated_at else None
    protocol_study = then or study
    rows = [row for row in study_ledger(study) if round_ is not None and row.round_id == round_.pk]
    strategy = provenance.get("strategy") or {}
    return {
        "study": {"id": study.pk, "title": study.title, "clinical_question": protocol_study.clinical_question},
        "model_version": _version(version),
        "protocol": {"sha256": provenance.get("protocol_sha256") or protocol_study.protocol_sha256(),
                     "as_of": aggregated_at.isoformat() if then else None,
                     "fields": protocol_study.protocol()},
        "training": {
            "round": round_.number if round_ else None,
            "base_version": provenance.get("base_version"),
            "strategy": strategy.get("name") or protocol_study.strategy,
            "strategy_settings": {k: v for k, v in (strategy.get("settings") or {}).items() if HIDDEN_SETTING not in k},
            "weighting": provenance.get("weighting") or "",
            "code_version": provenance.get("code_version") or "",
        },
        "ledger": {"rows": [row.as_dict() for row in rows], "totals": totals(rows)},
        "governance_at_aggregation": _governance(provenance, aggregated_at),
        "privacy": _privacy(protocol_study, provenance),
        "validation": {"sites": _site_metrics(version), "mean": (version.evaluation or {}).get("global") or {}},
        "initial": bool(provenance.get("initial")),
    }


def _version(version: ModelVersion) -> dict[str, Any]:
    return {"number": version.number, "sha256": version.sha256, "size_bytes": version.size_bytes,
            "created_at": version.created_at.isoformat()}


def _governance(provenance: dict[str, Any], aggregated_at: datetime | None) -> dict[str, Any]:
    """The gate's verdict recorded in the aggregating transaction, with the agreement and DPIA it read;
    `gate_at` is the moment to ask the gate about again (`/api/studies/<id>/gate/?at=`)."""
    gate = provenance.get("gate") or {}
    return {"gate_at": aggregated_at.isoformat() if aggregated_at else None, "allowed": gate.get("allowed"),
            "eligible_site_ids": gate.get("eligible_site_ids") or [], "checks": gate.get("checks") or [],
            "agreement": provenance.get("agreement"), "dpia": provenance.get("dpia")}


def _privacy(study: Study, provenance: dict[str, Any]) -> dict[str, Any]:
    """The protocol's DP settings and, when DP was on, the budget spent once this version's round counted."""
    return {"dp_noise_multiplier": study.dp_noise_multiplier, "dp_clip_norm": study.dp_clip_norm,
            "max_update_norm": study.max_update_norm, "budget": provenance.get("privacy")}


def _site_metrics(version: ModelVersion) -> list[dict[str, Any]]:
    sites = (version.evaluation or {}).get("sites") or {}
    names = dict(Site.objects.filter(pk__in=[int(key) for key in sites]).values_list("pk", "name"))
    return sorted(({"site_id": int(key), "site": names.get(int(key), f"Site {key}"), "metrics": metrics}
                   for key, metrics in sites.items()), key=lambda row: row["site"])
