"""The federated statistics round (`statistics_submit`, `statistics_close`): sites send counts, sums and
sums of squares (never rows); the coordinator pools them into the mean and SD every site standardizes with."""

import numpy as np
import pytest
from django.db.models import Max

from aggregation.choices import RoundKind, RoundStatus
from aggregation.events import RoundEventKind
from aggregation.models import Round, SiteStatistics, Standardization
from aggregation.services import statistics_submit
from consortium.audit.models import AuditEvent
from consortium.errors import Conflict, ValidationFailed
from studies import services as study_services
from studies.models import StudyEvent
from tests.aggregation.support import (
    agent_for,
    open_round,
    rejected,
    third_site,
)
from tests.base import active_study
from tests.support import actions_after, last_seq

FEATURES = ["age", "heart rate", "lactate"]


@pytest.fixture
def stats(p):
    study = active_study(p, federated_statistics=True, num_features=3, quorum=2)
    round_ = open_round(study)
    return study, round_, agent_for(p, p.site_a)[0], agent_for(p, p.site_b)[0]


def rows(seed: int, count: int) -> np.ndarray:
    generator = np.random.default_rng(seed)
    return generator.normal(loc=[60.0, 80.0, 2.0], scale=[15.0, 12.0, 0.8], size=(count, 3))


def send(agent, round_, data: np.ndarray, features: list[str] = FEATURES):
    return statistics_submit(actor=agent, round_id=round_.pk, features=features, count=len(data),
                             sums=[float(v) for v in data.sum(axis=0)],
                             sums_of_squares=[float(v) for v in np.square(data).sum(axis=0)])


def test_it_opens_a_statistics_round_first(stats):
    study, round_, _, _ = stats
    assert (round_.number, round_.kind, round_.base_version) == (1, RoundKind.STATISTICS, None)


def test_it_pools_the_sites_sums_into_the_global_mean_and_sd_and_opens_training(stats):
    study, round_, agent_a, agent_b = stats
    data_a, data_b = rows(1, 40), rows(2, 75)
    send(agent_a, round_, data_a)
    assert Round.objects.get(pk=round_.pk).status == RoundStatus.OPEN
    mark = last_seq()
    send(agent_b, round_, data_b)

    union = np.concatenate([data_a, data_b])
    standardization = Standardization.objects.get(study=study)
    assert standardization.features == FEATURES
    assert (standardization.sites, standardization.examples) == (2, 115)
    np.testing.assert_allclose(standardization.mean, union.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(standardization.std, union.std(axis=0), rtol=1e-9)
    round_.refresh_from_db()
    assert round_.status == RoundStatus.CLOSED
    training = Round.objects.get(study=study, number=2)
    assert (training.kind, training.status, training.base_version.number) == (RoundKind.TRAINING, RoundStatus.OPEN, 0)
    assert actions_after(mark) == ["aggregation.statistics.accepted", "aggregation.round.closed",
                                   "aggregation.model_version.created", "aggregation.round.opened"]


def test_it_keeps_the_sites_figures_out_of_the_audit_log(stats):
    study, round_, agent_a, _ = stats
    data = rows(3, 20)
    send(agent_a, round_, data)
    event = AuditEvent.objects.get(action="aggregation.statistics.accepted")
    assert event.details == {"round": 1, "count": 20, "features": 3}
    assert event.site_id == agent_a.site_id
    text = str(list(AuditEvent.objects.values_list("details", flat=True)))
    assert repr(float(data.sum(axis=0)[0]))[:8] not in text


def test_it_refuses_a_site_whose_feature_names_differ(stats):
    study, round_, agent_a, agent_b = stats
    send(agent_a, round_, rows(1, 30))
    with rejected(ValidationFailed, "Your feature columns differ from the other sites'", code="feature_mismatch",
                  status=400, action="aggregation.statistics.submit"):
        send(agent_b, round_, rows(2, 30), features=["age", "lactate", "heart rate"])
    assert Round.objects.get(pk=round_.pk).status == RoundStatus.OPEN


def test_it_refuses_a_second_submission_from_the_same_site(stats):
    study, round_, agent_a, _ = stats
    send(agent_a, round_, rows(1, 30))
    with rejected(Conflict, "already sent its statistics for round 1", code="duplicate_statistics", status=409,
                  action="aggregation.statistics.submit"):
        send(agent_a, round_, rows(9, 30))
    assert SiteStatistics.objects.get().count == 30


@pytest.mark.parametrize(("count", "width", "match"), [
    (1, 3, "at least two rows"),
    (10, 2, "The study has 3 features"),
], ids=["one-row", "missing-feature"])
def test_it_refuses_statistics_that_do_not_fit_the_study(stats, count, width, match):
    study, round_, agent_a, _ = stats
    with rejected(ValidationFailed, match, code="statistics", status=400, action="aggregation.statistics.submit"):
        send(agent_a, round_, rows(1, count)[:, :width], features=FEATURES[:width])


# --- the gate at close ---------------------------------------------------------------------------------


def three_site_statistics(p, **protocol):
    """A statistics study of sites A, B and C (quorum 2 unless given) with its statistics round open."""
    site_c = third_site(p)
    study = active_study(p, sites=(p.site_a, p.site_b, site_c),
                         **{"federated_statistics": True, "num_features": 3, "quorum": 2, **protocol})
    agents = [agent_for(p, site)[0] for site in (p.site_a, p.site_b, site_c)]
    return study, open_round(study), site_c, agents


def revoke(p, study, site, reason="Consent withdrawn by the hospital board."):
    admin = p.site_a_admin if site == p.site_a else p.site_b_admin  # site B's admin also runs site C
    study_services.participation_revoke(actor=admin, participation=study.participations.get(site=site), reason=reason)


def test_it_leaves_out_the_statistics_of_a_site_revoked_after_sending_them(p):
    study, round_, site_c, (agent_a, agent_b, agent_c) = three_site_statistics(p)
    data_a, data_b, data_c = rows(1, 40), rows(2, 75), rows(3, 500) * 10
    send(agent_a, round_, data_a)
    send(agent_c, round_, data_c)
    revoke(p, study, site_c)
    mark, events_mark = last_seq(), StudyEvent.objects.aggregate(top=Max("pk"))["top"]
    send(agent_b, round_, data_b)  # every site the gate still allows has now sent: the round closes

    union = np.concatenate([data_a, data_b])  # without C's rows
    standardization = Standardization.objects.get(study=study)
    assert (standardization.sites, standardization.examples) == (2, 115)
    np.testing.assert_allclose(standardization.mean, union.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(standardization.std, union.std(axis=0), rtol=1e-9)
    left_out = SiteStatistics.objects.get(site=site_c)
    assert left_out.exclusion_reason == "Participation is revoked. Consent withdrawn by the hospital board."
    assert actions_after(mark) == ["aggregation.statistics.accepted", "aggregation.statistics.excluded",
                                   "aggregation.round.closed", "aggregation.model_version.created",
                                   "aggregation.round.opened"]
    excluded = AuditEvent.objects.get(action="aggregation.statistics.excluded")
    assert (excluded.site_id, excluded.study_id) == (site_c.pk, study.pk)
    assert excluded.details == {"round": 1, "reason": left_out.exclusion_reason}
    closed = AuditEvent.objects.get(action="aggregation.round.closed")
    assert closed.details["site_ids"] == [p.site_a.pk, p.site_b.pk] and closed.details["excluded_site_ids"] == [
        site_c.pk]
    live = StudyEvent.objects.filter(pk__gt=events_mark, kind=RoundEventKind.UPDATE_EXCLUDED).get()
    assert live.payload["site_id"] == site_c.pk and live.payload["kind"] == "statistics"
    assert live.payload["reason"] == left_out.exclusion_reason
    assert Round.objects.get(pk=round_.pk).gate_result["eligible_site_ids"] == [p.site_a.pk, p.site_b.pk]


def test_it_blocks_the_statistics_round_when_the_revocation_policy_is_abort(p):
    study, round_, site_c, (agent_a, agent_b, agent_c) = three_site_statistics(p, revocation_policy="abort")
    send(agent_a, round_, rows(1, 40))
    send(agent_c, round_, rows(3, 50))
    revoke(p, study, site_c)
    send(agent_b, round_, rows(2, 75))
    round_.refresh_from_db()
    assert round_.status == RoundStatus.BLOCKED
    assert round_.status_reason == ("Aborted: statistics came from a site no longer eligible "
                                    "(revocation policy: abort).")
    assert not Standardization.objects.filter(study=study).exists()
    assert SiteStatistics.objects.get(site=site_c).exclusion_reason  # the reason stays on record
    assert AuditEvent.objects.get(action="aggregation.round.blocked").details["reason"] == round_.status_reason
    assert not Round.objects.filter(study=study, kind=RoundKind.TRAINING).exists()


def test_it_blocks_the_statistics_round_when_exclusions_leave_fewer_sites_than_the_quorum(stats, p):
    study, round_, agent_a, agent_b = stats
    send(agent_a, round_, rows(1, 40))
    revoke(p, study, p.site_a)
    send(agent_b, round_, rows(2, 75))
    round_.refresh_from_db()
    assert round_.status == RoundStatus.BLOCKED
    assert round_.status_reason == "Only 1 eligible sites sent statistics; the quorum is 2."
    assert not Standardization.objects.filter(study=study).exists()
    assert SiteStatistics.objects.get(site=p.site_a).exclusion_reason.startswith("Participation is revoked.")


def test_it_marks_statistics_left_out_at_close_as_excluded_on_the_dashboard(p):
    from aggregation.dashboard import CELL_STATES, study_dashboard

    study, round_, site_c, (agent_a, agent_b, agent_c) = three_site_statistics(p)
    send(agent_a, round_, rows(1, 40))
    send(agent_c, round_, rows(3, 50))
    revoke(p, study, site_c)
    send(agent_b, round_, rows(2, 75))
    heatmap = study_dashboard(study).figures["heatmap"]["data"][0]
    row = list(heatmap["y"]).index("Karolinska")
    assert CELL_STATES[heatmap["z"][row][0]] == "excluded"
    assert "Consent withdrawn by the hospital board." in heatmap["text"][row][0]
