"""What people (not agents) do with model versions: download one from the model version page, audited."""

from typing import Any

from aggregation.audit_actions import AggregationAction
from aggregation.models import ModelVersion
from aggregation.storage import verified_bytes
from consortium.audit.log import audited_service, record
from consortium.errors import NotFound
from studies.models import Study
from studies.selectors import study_get


@audited_service(AggregationAction.MODEL_DOWNLOAD)
def model_version_download(*, actor: Any, study: Study | int, number: int) -> tuple[ModelVersion, bytes]:
    """Version `number` of the study as safetensors bytes, for someone who may see the study.

    An invisible study or a missing version is NotFound (the refusal is audited). The file is checked
    against its recorded SHA-256 before it is handed out, and the download is recorded with via "page"."""
    visible = study_get(actor, study.pk if isinstance(study, Study) else study)
    version = ModelVersion.objects.filter(study=visible, number=number).select_related("round").first()
    if version is None:
        raise NotFound("No such model version.", study=visible.pk)
    data = verified_bytes(version)
    record(actor=actor, action=AggregationAction.MODEL_DOWNLOADED, target=version, study=visible,
           details={"via": "page", "version": version.number, "sha256": version.sha256,
                    "round": version.round.number if version.round_id else None})
    return version, data
