"""How the sites' evaluations of a model become its figures (`_record_base_evaluation`): the global AUC from the
sum of the sites' score histograms (a federated ROC), each site's own AUC when defined and why not otherwise; and
the evaluation round after the last training round (`evaluation_submit`), which scores the final model."""

from datetime import timedelta

import pytest
from django.utils import timezone

from aggregation.choices import RoundKind, RoundStatus
from aggregation.events import RoundEventKind
from aggregation.models import Evaluation, ModelVersion, Round, ScoreHistogram, Update
from aggregation.services import (
    model_download,
    round_aggregate,
    round_check_deadline,
    round_open_next,
    rounds_tick,
)
from consortium.audit.models import AuditEvent
from consortium.errors import Conflict, GateRefused, NotFound, ValidationFailed
from consortium.federated.metrics import auc_from_histogram, summed
from studies import services as study_services
from studies.models import StudyEvent
from tests.aggregation.support import (
    GOOD_EVALUATION,
    GOOD_METRICS,
    agent_for,
    evaluation_metrics,
    governed_study,
    open_round,
    rejected,
    send_evaluation,
    submit,
    third_site,
)
from tests.support import actions_after, last_seq

pytestmark = pytest.mark.usefixtures("no_broker")

# Site A's validation split holds one class only; site B's holds both.
ONE_CLASS = evaluation_metrics([0.7, 0.8, 0.9, 0.95, 0.6], [1, 1, 1, 1, 1], val_auc=None, val_accuracy=1.0)
BOTH = evaluation_metrics([0.1, 0.3, 0.65, 0.4, 0.9, 0.2], [0, 0, 0, 1, 1, 0], val_auc=0.875, val_accuracy=0.8)


def second_round(fed) -> tuple[Round, ModelVersion]:
    """Round 2 of the federation, which trains from v1: the sites evaluate v1 first."""
    first = open_round(fed.study)
    submit(fed.agent_a, first)
    submit(fed.agent_b, first)
    v1 = round_aggregate(round_id=first.pk)
    return Round.objects.get(study=fed.study, number=2), v1


def final_round(fed) -> tuple[Round, ModelVersion]:
    """The evaluation round of a one-round study (now `fed.study`), after its training round closed into v1."""
    fed.study = governed_study(fed.p, rounds=1)
    first = open_round(fed.study)
    submit(fed.agent_a, first)
    submit(fed.agent_b, first)
    v1 = round_aggregate(round_id=first.pk)
    return Round.objects.get(study=fed.study, number=2), v1


# --- the global metric of a model -----------------------------------------------------------------------


def test_it_keeps_a_global_auc_when_a_site_holds_one_class_computing_it_from_the_histograms(fed):
    round_, v1 = second_round(fed)
    submit(fed.agent_a, round_, metrics={**GOOD_METRICS, "base": ONE_CLASS})
    submit(fed.agent_b, round_, metrics={**GOOD_METRICS, "base": BOTH})
    v1.refresh_from_db()
    figures = v1.evaluation["global"]
    pooled = summed([ONE_CLASS["score_histogram"], BOTH["score_histogram"]])
    # 5 + 2 positives against 4 negatives; only the positives at 0.4 and 0.6 rank below a negative (0.65).
    assert figures["val_auc"] == pytest.approx(auc_from_histogram(pooled)) == pytest.approx(26 / 28)
    assert figures["val_auc_method"] == "federated_roc" and figures["val_examples"] == 11
    assert figures["val_accuracy"] == pytest.approx((1.0 * 5 + 0.8 * 6) / 11)
    site_a, site_b = (v1.evaluation["sites"][str(site.pk)] for site in (fed.p.site_a, fed.p.site_b))
    assert site_a["val_auc"] is None and site_a["val_auc_note"] == "only one class in the validation split"
    assert site_b["val_auc"] == 0.875 and "val_auc_note" not in site_b


def test_it_says_why_there_is_no_global_auc_when_every_split_holds_the_same_class(fed):
    round_, v1 = second_round(fed)
    submit(fed.agent_a, round_, metrics={**GOOD_METRICS, "base": ONE_CLASS})
    submit(fed.agent_b, round_, metrics={**GOOD_METRICS, "base": ONE_CLASS})
    v1.refresh_from_db()
    assert "val_auc" not in v1.evaluation["global"]
    assert v1.evaluation["global"]["val_auc_note"] == "only one class in every site's validation split"


def test_it_keeps_the_histograms_out_of_the_update_the_audit_log_and_the_live_events(fed):
    round_, v1 = second_round(fed)
    submit(fed.agent_a, round_, metrics={**GOOD_METRICS, "base": ONE_CLASS})
    submit(fed.agent_b, round_, metrics={**GOOD_METRICS, "base": BOTH})
    round_aggregate(round_id=round_.pk)
    v1.refresh_from_db()
    assert _histograms(v1) == {fed.p.site_a.pk: ONE_CLASS["score_histogram"],
                               fed.p.site_b.pk: BOTH["score_histogram"]}
    assert all("score_histogram" not in update.metrics["base"] for update in Update.objects.filter(round=round_))
    everything = [*AuditEvent.objects.values_list("details", flat=True),
                  *StudyEvent.objects.values_list("payload", flat=True)]
    assert not any("score_histogram" in str(item) or "positives" in str(item) for item in everything)
    metrics = StudyEvent.objects.filter(kind=RoundEventKind.ROUND_METRICS).order_by("-seq").first().payload
    assert metrics["evaluated_version"] == 1 and metrics["global"]["val_auc"] == pytest.approx(26 / 28)
    note = metrics["evaluated_by_site"][str(fed.p.site_a.pk)]["val_auc_note"]
    assert note == "only one class in the validation split"


@pytest.mark.parametrize(("base", "code", "match"), [
    ({**BOTH, "val_examples": 7}, "score_histogram", "score_histogram counts 6 rows; val_examples says 7"),
    ({**BOTH, "score_histogram": {"positives": [1] * 100}}, "score_histogram", "exactly positives and negatives"),
    ({**BOTH, "score_histogram": {**BOTH["score_histogram"], "positives": [-1] + [0] * 99}}, "score_histogram",
     "non-negative integers"),
    ({**BOTH, "val_auc": 1.5}, "metrics", "between 0 and 1"),
    ({**BOTH, "val_examples": -3, "score_histogram": None}, "metrics", "val_examples must be the number"),
    ({**BOTH, "rows": [[1, 2]]}, "metrics", "Unknown evaluation metrics: rows"),
    ("0.9", "metrics", "must be a JSON object"),
], ids=["count-mismatch", "missing-class", "negative-count", "auc-out-of-range", "negative-rows", "unknown-key",
        "not-an-object"])
def test_it_refuses_an_update_whose_base_evaluation_is_malformed(fed, base, code, match):
    round_, _ = second_round(fed)
    with rejected(ValidationFailed, match, code=code, status=400):
        submit(fed.agent_a, round_, metrics={**GOOD_METRICS, "base": base})


# --- the evaluation round after the last training round ------------------------------------------------


def test_it_opens_an_evaluation_of_the_final_model_once_the_last_training_round_closed(fed):
    final, v1 = final_round(fed)
    assert (final.kind, final.status, final.base_version) == (RoundKind.EVALUATION, RoundStatus.OPEN, v1)
    opened = AuditEvent.objects.filter(action="aggregation.round.opened").order_by("-seq").first()
    assert opened.details["kind"] == "evaluation" and opened.details["base_version"] == 1
    event = StudyEvent.objects.filter(kind=RoundEventKind.ROUND_OPENED).order_by("-seq").first()
    assert event.payload["kind"] == "evaluation" and event.payload["eligible"] == 2
    assert event.as_message()["text"] == ("Round 2 opened to evaluate the final model v1 (no training): "
                                          "2 sites eligible.")


def test_it_lets_a_site_download_the_final_model_and_send_its_evaluation(fed):
    final, v1 = final_round(fed)
    version, _ = model_download(actor=fed.agent_a, round_id=final.pk)
    mark = last_seq()
    row = send_evaluation(fed.agent_a, final, metrics=BOTH)
    assert version == v1 and row.metrics == {key: BOTH[key] for key in ("val_loss", "val_accuracy", "val_auc",
                                                                         "val_examples")}
    assert actions_after(mark) == ["aggregation.evaluation.accepted"]
    accepted = AuditEvent.objects.get(action="aggregation.evaluation.accepted")
    assert accepted.details == {"round": 2, "version": 1, "metrics": row.metrics, "score_histogram": True}
    v1.refresh_from_db()
    assert v1.evaluation["sites"][str(fed.p.site_a.pk)]["val_auc"] == 0.875
    assert _histograms(v1) == {fed.p.site_a.pk: BOTH["score_histogram"]}
    received = StudyEvent.objects.filter(kind=RoundEventKind.EVALUATION_RECEIVED).get().payload
    assert (received["site_id"], received["version"], received["submitted"], received["eligible"]) == (
        fed.p.site_a.pk, 1, 1, 2)
    assert "score_histogram" not in str(received)
    final.refresh_from_db()
    assert final.status == RoundStatus.OPEN


def test_it_closes_the_evaluation_round_once_every_eligible_site_answered_and_runs_nothing_more(fed):
    final, v1 = final_round(fed)
    send_evaluation(fed.agent_a, final, metrics=ONE_CLASS)
    mark = last_seq()
    send_evaluation(fed.agent_b, final, metrics=BOTH)
    final.refresh_from_db()
    assert final.status == RoundStatus.CLOSED
    assert final.status_reason == "Every eligible site has submitted. Model v1 evaluated by 2 sites."
    assert actions_after(mark) == ["aggregation.evaluation.accepted", "aggregation.round.closed"]
    v1.refresh_from_db()
    assert v1.evaluation["global"]["val_auc"] == pytest.approx(26 / 28)
    metrics = StudyEvent.objects.filter(kind=RoundEventKind.ROUND_METRICS).order_by("-seq").first().payload
    assert (metrics["round"], metrics["version"], metrics["evaluated_version"]) == (2, None, 1)
    assert metrics["global"]["val_auc"] == pytest.approx(26 / 28) and metrics["global"]["val_examples"] == 11
    assert round_open_next(study_id=fed.study.pk) is None
    rounds_tick()
    assert Round.objects.filter(study=fed.study).count() == 2


def test_it_closes_the_evaluation_round_at_its_deadline_with_the_answers_it_has(fed):
    final, v1 = final_round(fed)
    send_evaluation(fed.agent_a, final)
    round_check_deadline(round_id=final.pk, moment=final.deadline + timedelta(seconds=1))
    final.refresh_from_db()
    assert final.status == RoundStatus.CLOSED and "evaluated by 1 sites" in final.status_reason
    v1.refresh_from_db()
    assert v1.evaluation["global"]["val_examples"] == 20


def test_it_blocks_an_evaluation_round_nobody_answered_and_opens_another(fed):
    final, v1 = final_round(fed)
    round_check_deadline(round_id=final.pk, moment=final.deadline + timedelta(seconds=1))
    final.refresh_from_db()
    assert final.status == RoundStatus.BLOCKED and "the quorum is 1" in final.status_reason
    again = round_open_next(study_id=fed.study.pk)
    assert (again.kind, again.base_version, again.number) == (RoundKind.EVALUATION, v1, 3)


def test_it_refuses_an_update_in_an_evaluation_round(fed):
    final, _ = final_round(fed)
    with rejected(Conflict, "Round 2 is a final evaluation round", code="wrong_round_kind", status=409):
        submit(fed.agent_a, final)


def test_it_refuses_an_evaluation_in_a_training_round(fed):
    round_ = open_round(fed.study)
    with rejected(Conflict, "Round 1 is a training round", code="wrong_round_kind", status=409,
                  action="aggregation.evaluation.submit"):
        send_evaluation(fed.agent_a, round_)


def test_it_refuses_a_second_evaluation_from_the_same_site(fed):
    final, _ = final_round(fed)
    send_evaluation(fed.agent_a, final)
    with rejected(Conflict, "already sent its evaluation for round 2", code="duplicate_evaluation", status=409,
                  action="aggregation.evaluation.submit"):
        send_evaluation(fed.agent_a, final, metrics=BOTH)
    assert Evaluation.objects.get().metrics["val_auc"] == 1.0


@pytest.mark.parametrize(("changes", "code", "match"), [
    ({"round_number": 5}, "stale_round", "This is round 2, not 5"),
    ({"base_version": 0}, "stale_model", "Round 2 evaluates model v1, not v0"),
])
def test_it_refuses_an_evaluation_of_another_round_or_model(fed, changes, code, match):
    final, _ = final_round(fed)
    with rejected(Conflict, match, code=code, status=409, action="aggregation.evaluation.submit"):
        send_evaluation(fed.agent_a, final, **changes)


@pytest.mark.parametrize(("metrics", "code", "match"), [
    ({**GOOD_EVALUATION, "val_examples": 0, "score_histogram": None}, "metrics", r"at least 1"),
    ({key: value for key, value in GOOD_EVALUATION.items() if key != "val_examples"}, "metrics", r"at least 1"),
    ({**GOOD_EVALUATION, "val_examples": 21}, "score_histogram", "counts 20 rows; val_examples says 21"),
    ({**GOOD_EVALUATION, "weights": [0.1]}, "metrics", "Unknown evaluation metrics: weights"),
    ({**GOOD_EVALUATION, "val_loss": float("inf")}, "metrics", "finite numbers"),
], ids=["no-rows", "rows-missing", "count-mismatch", "unknown-key", "infinite-loss"])
def test_it_refuses_a_malformed_evaluation(fed, metrics, code, match):
    final, _ = final_round(fed)
    with rejected(ValidationFailed, match, code=code, status=400, action="aggregation.evaluation.submit"):
        send_evaluation(fed.agent_a, final, metrics=metrics)


def test_it_refuses_an_evaluation_from_a_site_the_gate_refuses(fed):
    final, _ = final_round(fed)
    study_services.participation_suspend(actor=fed.p.site_a_admin, participation=fed.participation(fed.p.site_a),
                                         reason="Audit of the data pipeline.")
    with rejected(GateRefused, "The gate refuses this site now", code="gate_refused", status=403,
                  action="aggregation.evaluation.submit"):
        send_evaluation(fed.agent_a, final)


def test_it_answers_not_found_to_an_evaluation_from_a_site_outside_the_study(fed):
    final, _ = final_round(fed)
    outsider, _ = agent_for(fed.p, third_site(fed.p))
    with rejected(NotFound, "No such round", code="not_found", status=404, action="aggregation.evaluation.submit"):
        send_evaluation(outsider, final)


def test_it_counts_an_evaluation_submitted_after_the_deadline_passed_no_more(fed):
    final, _ = final_round(fed)
    round_check_deadline(round_id=final.pk, moment=timezone.now() + timedelta(days=1))
    with rejected(Conflict, "takes no more submissions", code="stale_round", status=409,
                  action="aggregation.evaluation.submit"):
        send_evaluation(fed.agent_a, final)


def _histograms(version: ModelVersion) -> dict[int, dict]:
    return dict(ScoreHistogram.objects.filter(version=version).values_list("site_id", "histogram"))


def test_a_site_that_evaluates_a_version_again_replaces_its_histogram_in_the_sum(fed):
    """A round blocked at its deadline runs again from the same version: a site's second evaluation of it takes
    the first's place, in the sites' figures and in the summed histogram behind the federated AUC."""
    round_, v1 = second_round(fed)
    submit(fed.agent_a, round_, metrics={**GOOD_METRICS, "base": ONE_CLASS})
    v1.refresh_from_db()
    assert v1.evaluation["score_histogram_sum"] == ONE_CLASS["score_histogram"]
    round_check_deadline(round_id=round_.pk, moment=round_.deadline)
    assert Round.objects.get(pk=round_.pk).status == RoundStatus.BLOCKED  # one site of a quorum of two
    again = open_round(fed.study)
    assert again.base_version == v1
    submit(fed.agent_a, again, metrics={**GOOD_METRICS, "base": BOTH})
    submit(fed.agent_b, again, metrics={**GOOD_METRICS, "base": ONE_CLASS})
    v1.refresh_from_db()
    both = summed([BOTH["score_histogram"], ONE_CLASS["score_histogram"]])
    assert _histograms(v1) == {fed.p.site_a.pk: BOTH["score_histogram"], fed.p.site_b.pk: ONE_CLASS["score_histogram"]}
    assert v1.evaluation["score_histogram_sum"] == both
    assert v1.evaluation["global"]["val_auc"] == pytest.approx(auc_from_histogram(both))
    assert v1.evaluation["sites"][str(fed.p.site_a.pk)]["val_auc"] == BOTH["val_auc"]
