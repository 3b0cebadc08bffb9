"""Data set registration: a site's agent registers counts only (never rows); the gate checks the newest
registration against the protocol's schema, feature by feature, and keeps the site out of rounds until it
matches; the study page shows the summaries within the disclosure rules."""

import pytest

from consortium.errors import NotFound, ValidationFailed
from studies import services
from studies.choices import GateCheck
from studies.governance import evaluate
from studies.models import DatasetRegistration
from tests.base import active_study, matching_summary, register_dataset, site_agent
from tests.support import last_seq, only_event, refused

FEATURES = ["age", "lactate", "crp", "wbc"]


@pytest.fixture
def study(p):
    return active_study(p, num_features=4, feature_names=FEATURES, label_column="sepsis")


def dataset_check(study, site):
    return next(c for c in evaluate(study, "aggregate", site=site).checks
                if c.name == GateCheck.DATASET_REGISTERED and c.site_id == site.pk)


def test_it_blocks_a_site_whose_data_set_does_not_match_with_a_per_feature_report(p, study):
    summary = matching_summary(study, rows=300)
    summary["features"] = [f for f in summary["features"] if f["name"] != "crp"] + [
        {"name": "sodium", "type": "integer", "missing": 3}, {"name": "potassium", "type": "float", "missing": 0}]
    done = register_dataset(p, study, p.site_a, summary)
    assert done.created and done.mismatches == [
        "missing feature 'crp'", "unexpected feature 'sodium'", "unexpected feature 'potassium'",
        "wrong count: 5 feature column(s), the protocol expects 4"]
    check = dataset_check(study, p.site_a)
    assert not check.passed
    assert check.reason == ("Its data set does not match the protocol: missing feature 'crp'; unexpected feature "
                            "'sodium'; unexpected feature 'potassium'; wrong count: 5 feature column(s), the protocol "
                            "expects 4.")
    gate = evaluate(study, "aggregate")
    assert [v.site_id for v in gate.eligible_sites] == [p.site_b.pk]
    assert not evaluate(study, "submit_update", site=p.site_a).allowed


def test_it_names_an_absent_label_column(p, study):
    summary = matching_summary(study)
    summary["label_column"], summary["label"] = "sepsis", {"present": False, "positives": 0, "negatives": 0,
                                                            "other": 0}
    register_dataset(p, study, p.site_b, summary)
    assert "label column 'sepsis' absent" in dataset_check(study, p.site_b).reason


def test_re_registering_the_right_data_restores_eligibility_and_the_newest_counts(p, study):
    wrong = matching_summary(study)
    wrong["features"][0]["name"] = "Age"
    register_dataset(p, study, p.site_a, wrong)
    assert not dataset_check(study, p.site_a).passed
    mark = last_seq()
    register_dataset(p, study, p.site_a, rows=420, positives=100)
    event = only_event(mark, "studies.dataset.registered")
    assert event.details["matches_protocol"] is True and event.details["rows"] == 420
    check = dataset_check(study, p.site_a)
    assert check.passed and check.reason == ("Registered 420 rows (100 positive, 320 negative), matching the "
                                             "protocol.")
    assert DatasetRegistration.objects.filter(study=study, site=p.site_a).count() == 3  # append-only
    assert evaluate(study, "aggregate").allowed


def test_an_unregistered_site_is_not_eligible_when_the_protocol_declares_a_schema(p, study):
    DatasetRegistration.objects.filter(study=study, site=p.site_b).delete()  # as if its agent never connected
    check = dataset_check(study, p.site_b)
    assert not check.passed and check.reason.startswith("Has not registered its data set")


def test_without_a_declared_schema_registration_is_optional_but_a_registration_is_still_judged(p):
    study = active_study(p, num_features=4)  # e.g. a Flower federation, whose clients are not our agent
    DatasetRegistration.objects.filter(study=study, site=p.site_b).delete()
    assert dataset_check(study, p.site_b).passed
    register_dataset(p, study, p.site_b, matching_summary(study) | {"label_column": "outcome"})
    assert not dataset_check(study, p.site_b).passed


def test_an_amended_schema_is_judged_at_once_against_the_registered_data(p, study):
    assert dataset_check(study, p.site_a).passed
    study = services.study_update_protocol(actor=p.pi, study=study, feature_names=["age", "lactate", "crp", "pct"])
    assert dataset_check(study, p.site_a).reason.endswith("missing feature 'pct'; unexpected feature 'wbc'.")


def test_the_same_summary_again_adds_no_row(p, study):
    mark = last_seq()
    done = register_dataset(p, study, p.site_a)
    assert not done.created and last_seq() == mark


@pytest.mark.parametrize(("mangle", "says"), [
    (lambda s: s.pop("rows"), "exactly the keys"),
    (lambda s: s.update(rows=-1), "rows must be a whole number"),
    (lambda s: s.update(rows=True), "rows must be a whole number"),
    (lambda s: s["label"].update(positives=10**6), "label.positives must be a whole number"),
    (lambda s: s["label"].update(other=1), "add up to"),
    (lambda s: s["features"].append({"name": "age", "type": "float", "missing": 0}), "feature names repeat"),
    (lambda s: s["features"][0].update(type="text"), "has type 'text'"),
    (lambda s: s["features"][0].update(rows=[1, 2]), "exactly the keys"),
])
def test_it_refuses_a_malformed_summary_and_changes_nothing(p, study, mangle, says):
    summary = matching_summary(study)
    mangle(summary)
    agent = site_agent(p, p.site_a)
    with refused(ValidationFailed, says, action="studies.dataset.register") as outcome:
        services.dataset_register(actor=agent, study_id=study.pk, summary=summary)
    assert outcome.error.code == "bad_dataset_summary"


def test_a_site_not_taking_part_cannot_register(p):
    study = active_study(p, sites=(p.site_a,), quorum=1, num_features=4)
    agent = site_agent(p, p.site_b)
    with refused(NotFound, "takes no part", action="studies.dataset.register"):
        services.dataset_register(actor=agent, study_id=study.pk, summary=matching_summary(study))
