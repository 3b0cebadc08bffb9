"""The agent's data set endpoints (the study list and the registration) and the bound the registration puts on
an update's num_examples: more than the site registered is refused with that reason, audited and shown live."""

from aggregation.events import RoundEventKind
from consortium.audit.models import AuditOutcome
from consortium.errors import ValidationFailed
from studies.models import DatasetRegistration, StudyEvent
from tests.aggregation.support import open_round, rejected, submit
from tests.aggregation.test_api_agent import agent_client
from tests.api_support import assert_error
from tests.base import matching_summary, register_dataset
from tests.support import events_after, last_seq


def test_it_lists_the_sites_studies_with_protocol_hash_and_the_registered_summary(fed):
    answer = agent_client(fed.plaintext_a).get("/api/agent/studies/")
    assert answer.status_code == 200
    [entry] = answer.json()
    newest = DatasetRegistration.objects.filter(study=fed.study, site=fed.p.site_a).order_by("-pk").first()
    assert entry["study_id"] == fed.study.pk and entry["protocol_sha256"] == fed.study.protocol_sha256()
    assert entry["protocol"]["num_features"] == 4 and entry["dataset_summary_sha256"] == newest.summary_sha256


def test_it_registers_over_http_and_answers_with_the_schema_report(fed):
    summary = matching_summary(fed.study, rows=77)
    summary["label"] = {"present": False, "positives": 0, "negatives": 0, "other": 0}
    mark = last_seq()
    answer = agent_client(fed.plaintext_a).post(f"/api/agent/studies/{fed.study.pk}/dataset/", summary,
                                                format="json")
    assert answer.status_code == 201, answer.content
    body = answer.json()
    assert (body["rows"], body["matches_protocol"]) == (77, False)
    assert body["mismatches"] == ["label column 'target' absent"]
    [event] = events_after(mark)[:1]
    assert (event.action, event.outcome, event.site_id) == ("studies.dataset.registered", AuditOutcome.OK,
                                                            fed.p.site_a.pk)
    again = agent_client(fed.plaintext_a).post(f"/api/agent/studies/{fed.study.pk}/dataset/", summary,
                                               format="json")
    assert again.status_code == 200 and again.json()["registration_id"] == body["registration_id"]


def test_it_refuses_a_malformed_summary_over_http_with_a_clear_400(fed):
    mark = last_seq()
    answer = agent_client(fed.plaintext_a).post(f"/api/agent/studies/{fed.study.pk}/dataset/",
                                                {"rows": 10, "rows_of_data": [[1, 2]]}, format="json")
    assert_error(answer, 400, "bad_dataset_summary", mentions="exactly the keys")
    assert [(e.action, e.outcome) for e in events_after(mark)] == [("studies.dataset.register",
                                                                    AuditOutcome.DENIED)]


def test_another_sites_or_an_unknown_study_is_a_404(fed, p):
    answer = agent_client(fed.plaintext_a).post("/api/agent/studies/999999/dataset/",
                                                matching_summary(fed.study), format="json")
    assert_error(answer, 404, "not_found", mentions="takes no part")


def test_it_refuses_more_examples_than_the_site_registered_and_shows_it_live(fed):
    register_dataset(fed.p, fed.study, fed.p.site_a, rows=50)
    round_ = open_round(fed.study)
    with rejected(ValidationFailed, "X-Num-Examples is 51, but Amsterdam UMC registered a data set of 50 rows",
                  code="num_examples_above_registered", status=400) as outcome:
        submit(fed.agent_a, round_, num_examples=51)
    assert outcome.event.site_id == fed.p.site_a.pk
    refusal = StudyEvent.objects.filter(study=fed.study, kind=RoundEventKind.UPDATE_REFUSED).get()
    assert refusal.payload["code"] == "num_examples_above_registered"
    update, created = submit(fed.agent_a, round_, num_examples=50)  # what it registered is accepted
    assert created and update.num_examples == 50
