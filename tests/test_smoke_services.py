from consortium.audit.log import verify_chain
from studies.choices import StudyStatus
from studies.governance import evaluate
from tests.base import active_study


def test_it_walks_a_study_to_active_with_an_intact_chain(p):
    study = active_study(p)
    assert study.status == StudyStatus.ACTIVE
    result = evaluate(study, "aggregate")
    assert result.allowed, [c.reason for c in result.failures]
    assert {v.site_id for v in result.eligible_sites} == {p.site_a.pk, p.site_b.pk}
    assert verify_chain().intact
