"""Level 1 of the one lock order (see `consortium.locks`): the study row, taken first by every write
that changes a study, its governance or its rounds."""

from consortium.locks import locked
from studies.models import Study


def lock_study(study_id: int) -> Study:
    """The study, row-locked until commit (raises Study.DoesNotExist when there is none)."""
    return locked(Study.objects.filter(pk=study_id)).get()
