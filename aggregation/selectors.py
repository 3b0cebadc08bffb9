"""Reads for the agent API and the study page."""

from typing import Any

from aggregation.choices import RoundKind, RoundStatus
from aggregation.models import ModelVersion, Round, Standardization
from studies.choices import PARTICIPATION_CURRENT, GateAction
from studies.governance import evaluate
from studies.models import Study

AGENT_PROTOCOL_FIELDS = ("model_kind", "hidden_units", "num_features", "label_column", "local_epochs", "batch_size",
                         "learning_rate", "proximal_mu")


def open_rounds_for_site(site_id: int) -> list[dict[str, Any]]:
    """Open rounds of the studies this site takes part in, where the gate lets it download the model
    now (one gate evaluation per study: a site takes part in few studies)."""
    rounds = (
        Round.objects.filter(status=RoundStatus.OPEN, study__participations__site_id=site_id,
                             study__participations__status__in=PARTICIPATION_CURRENT)
        .select_related("study", "base_version").order_by("opened_at").distinct()
    )
    standardizations = {s.study_id: s for s in Standardization.objects.filter(study__in=[r.study_id for r in rounds])}
    answer = []
    for round_ in rounds:
        if not evaluate(round_.study, GateAction.DOWNLOAD_MODEL, site=site_id).allowed:
            continue
        submitted = (round_.statistics if round_.kind == RoundKind.STATISTICS else round_.updates).filter(
            site_id=site_id).exists()
        answer.append(_describe(round_, submitted, standardizations.get(round_.study_id)))
    return answer


def _describe(round_: Round, submitted: bool, standardization: Standardization | None) -> dict[str, Any]:
    study: Study = round_.study
    return {
        "round_id": round_.pk,
        "study_id": study.pk,
        "study_title": study.title,
        "number": round_.number,
        "kind": round_.kind,
        "base_version": round_.base_version.number if round_.base_version else None,
        "deadline": round_.deadline.isoformat(),
        "submitted": submitted,
        "protocol": {field: getattr(study, field) for field in AGENT_PROTOCOL_FIELDS},
        "standardization": {"features": standardization.features, "mean": standardization.mean,
                            "std": standardization.std} if standardization else None,
    }


def study_rounds(study: Study) -> list[Round]:
    """Every round of the study, newest first, with its updates and the version it produced."""
    return list(
        Round.objects.filter(study=study).select_related("base_version", "produced_version")
        .prefetch_related("updates__site").order_by("-number")
    )


def latest_version(study: Study) -> ModelVersion | None:
    return ModelVersion.objects.filter(study=study).order_by("-number").first()
