"""Level 2 of the one lock order (see `consortium.locks`): the study's round row, after the study's
(`studies.locks.lock_study`)."""

from aggregation.models import Round
from consortium.errors import NotFound
from consortium.locks import locked
from studies.locks import lock_study
from studies.models import Participation


def lock_round(round_id: int, *, study_id: int | None = None) -> Round:
    """The round and its study under their row locks, study first (levels 1 and 2 of `consortium.locks`)."""
    if study_id is None:
        study_id = Round.objects.filter(pk=round_id).values_list("study_id", flat=True).get()  # never changes
    study = lock_study(study_id)
    # `of`: PostgreSQL cannot lock the nullable side of the outer join to base_version.
    round_ = locked(Round.objects.with_base_version().filter(pk=round_id), of=("self",)).get()
    round_.study = study
    return round_


def lock_round_for_site(round_id: int, site_id: int, *, lock: bool = True) -> Round:
    """The round (with its study's and its own row lock unless `lock` is False), if the site takes or took
    part in its study; else 404."""
    study_id = Round.objects.filter(pk=round_id).values_list("study_id", flat=True).first()
    if study_id is None or not Participation.objects.filter(study_id=study_id, site_id=site_id).exists():
        raise NotFound("No such round.")
    if lock:
        return lock_round(round_id, study_id=study_id)
    return Round.objects.with_base_version().select_related("study").get(pk=round_id)
