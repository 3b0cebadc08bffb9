"""Disclosure control (`studies.disclosure`): a site admin sees their own site's figures and figures pooled over
at least k sites, never another site's; the PI, DPOs and auditors see all. The dashboard page, the websocket
stream (catch-up and live), the rounds, version, study and overview pages, and the API and its exports alike.

Site B reports figures found nowhere else (its example count, its metrics, its update's norm), so a page or a
message that holds one of them discloses site B."""

import json
import re

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.urls import reverse

from aggregation.events import RoundEventKind as EventKind
from aggregation.models import Round, Update
from aggregation.services import round_aggregate
from studies.disclosure import FULL, Disclosure, disclose_event, disclosure_for
from studies.models import Study
from tests.aggregation.support import (
    GOOD_METRICS,
    agent_for,
    governed_study,
    open_round,
    submit,
)
from tests.api_support import client
from tests.pages import client_for, page
from tests.studies.test_consumers import open_socket

A_EXAMPLES, B_EXAMPLES = 1234, 4321
# Each site's evaluation of the model it trained from ("base") becomes that version's per-site evaluation.
A_METRICS = {**GOOD_METRICS, "val_auc": 0.6123, "val_loss": 0.4111, "training_seconds": 7.25,
             "base": {"val_auc": 0.6123, "val_accuracy": 0.5, "val_loss": 0.4111, "val_examples": 20}}
B_METRICS = {**GOOD_METRICS, "val_auc": 0.9876, "val_loss": 0.2468, "training_seconds": 9.75,
             "base": {"val_auc": 0.9876, "val_accuracy": 0.5, "val_loss": 0.2468, "val_examples": 20}}


def two_rounds(p, **protocol) -> Study:
    """Two aggregated rounds of sites A and B; in round 2 both evaluated v1, so v1 has per-site and pooled figures."""
    study = governed_study(p, rounds=3, **protocol)
    agents = {p.site_a: agent_for(p, p.site_a)[0], p.site_b: agent_for(p, p.site_b)[0]}
    figures = {p.site_a: (A_EXAMPLES, A_METRICS), p.site_b: (B_EXAMPLES, B_METRICS)}
    for number in (1, 2):
        round_ = open_round(study) if number == 1 else Round.objects.get(study=study, number=number)
        for site, agent in agents.items():
            examples, metrics = figures[site]
            submit(agent, round_, num_examples=examples, metrics=metrics)
        round_aggregate(round_id=round_.pk)
    return study


def b_figures(study: Study, p) -> list[str]:
    """Strings that only a disclosure of site B's figures would contain."""
    norms = Update.objects.filter(round__study=study, site=p.site_b).values_list("weight_norm", "delta_norm")
    return [str(B_EXAMPLES), "0.9876", "0.988", "0.2468", "0.247", "9.75",
            *(f"{value:.6f}"[:7] for pair in norms for value in pair)]


# What may hold any digits without being a site's figure: timestamps ("...T10:51:10.988123") and a round's
# aggregation times. Left out before matching, or "0.988" would be found in the seconds of a timestamp.
NOT_FIGURES = re.compile(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d:\d\d|Z)?'
                         r'|"(duration|wait)_seconds": [-+0-9.eE]+')


def leaked(text: str, figures: list[str]) -> list[str]:
    text = NOT_FIGURES.sub("", text)
    return [figure for figure in figures if figure in text]


@pytest.fixture(name="study")
def study_fixture(p) -> Study:
    return two_rounds(p)


def test_the_policy_sees_all_for_the_pi_dpo_and_auditor_and_own_sites_for_a_site_admin(p, study):
    for user in (p.pi, p.dpo, p.auditor):
        assert disclosure_for(user, study) is FULL
    mine = disclosure_for(p.site_a_admin, study)
    assert mine == Disclosure(False, frozenset({p.site_a.pk}), 3)
    assert mine.sees_site(p.site_a.pk) and not mine.sees_site(p.site_b.pk) and not mine.sees_site(None)
    assert not mine.sees_pool([p.site_a.pk, p.site_b.pk]) and mine.sees_pool([1, 2, 3])


def test_a_site_admins_dashboard_shows_no_other_sites_figures(p, study):
    figures = b_figures(study, p)
    for_pi = page(client_for(p.pi).get(reverse("aggregation:dashboard", args=[study.pk])))
    assert leaked(for_pi, figures)  # the figures are there to leak: the PI sees them
    body = page(client_for(p.site_a_admin).get(reverse("aggregation:dashboard", args=[study.pk])))
    assert leaked(body, figures) == []
    assert str(A_EXAMPLES) in body and p.site_b.name in body  # site B is named, not measured


def test_a_site_admins_pages_show_no_other_sites_figures(p, study):
    figures = b_figures(study, p)
    pages = [reverse("aggregation:rounds", args=[study.pk]), reverse("aggregation:version", args=[study.pk, 1]),
             reverse("studies:detail", args=[study.pk]), reverse("overview")]
    for url in pages:
        assert leaked(page(client_for(p.site_a_admin).get(url)), figures) == [], url
    version = page(client_for(p.site_a_admin).get(pages[1]))
    assert 'data-testid="evaluation-suppressed"' in version and "at least 3" in version
    assert "0.612" in version  # its own site's figures stay
    assert leaked(page(client_for(p.pi).get(pages[1])), figures)


def test_a_pool_of_at_least_k_sites_is_shown_to_a_site_admin(p):
    study = two_rounds(p, disclosure_min_sites=2)
    version = page(client_for(p.site_a_admin).get(reverse("aggregation:version", args=[study.pk, 1])))
    assert 'data-testid="evaluation-suppressed"' not in version and 'data-evaluation="mean"' in version
    assert "0.9876" not in version  # the pool, never site B's own row


@pytest.mark.django_db(transaction=True)  # the consumer reads the database from its own calls
def test_a_site_admins_websocket_stream_shows_no_other_sites_figures(p, study):
    figures = b_figures(study, p)

    async def stream(user) -> list[dict]:
        communicator = await open_socket(user, study.pk, "?after=0")
        hello = await communicator.receive_json_from(timeout=30)
        messages = [await communicator.receive_json_from(timeout=30) for _ in range(hello["last_id"])]
        # Live, through the hub: another update from site B arrives while the viewer watches.
        update = await sync_to_async(Update.objects.filter(site=p.site_b).select_related("round").first)()
        await sync_to_async(_publish_update)(study, update)
        messages.append(await communicator.receive_json_from(timeout=30))
        await communicator.disconnect()
        return messages

    for_pi = async_to_sync(stream)(p.pi)
    assert leaked(json.dumps(for_pi), figures)
    messages = async_to_sync(stream)(p.site_a_admin)
    assert leaked(json.dumps(messages), figures) == []
    live = messages[-1]
    assert live["kind"] == EventKind.UPDATE_RECEIVED and live["data"]["site_id"] == p.site_b.pk
    assert live["data"]["num_examples"] is None and str(B_EXAMPLES) not in live["text"]
    metrics = [m for m in messages if m["kind"] == EventKind.ROUND_METRICS]
    assert metrics and all(set(m["data"]["sites"]) <= {str(p.site_a.pk)} for m in metrics)
    assert all(m["data"]["global"] == {} for m in metrics if m["data"].get("global_suppressed"))


def _publish_update(study: Study, update: Update) -> None:
    from studies.events import publish

    publish(study, EventKind.UPDATE_RECEIVED,
            {"round": update.round.number, "site_id": update.site_id, "site": update.site.name,
             "num_examples": B_EXAMPLES, "weight_norm": update.weight_norm, "delta_norm": update.delta_norm,
             "metrics": B_METRICS, "submitted": 2, "eligible": 2})


def test_the_api_and_exports_give_a_site_admin_no_other_sites_figures(p, study):
    figures = b_figures(study, p)
    api = client(p.site_a_admin)
    for url in (f"/api/studies/{study.pk}/", f"/api/studies/{study.pk}/gate/", "/api/studies/",
                f"/api/studies/{study.pk}/participations/"):
        response = api.get(url)
        assert response.status_code == 200, url
        assert leaked(response.content.decode(), figures) == [], url
    # The audit log holds every site's figures: only the full view (auditors, DPOs, consortium admins) reads it.
    assert api.get("/api/audit/events/").status_code == 403
    assert api.get("/api/audit/events.csv").status_code == 403
    assert client_for(p.site_a_admin).get(reverse("audit-export")).status_code in (403, 404)
    export = client(p.auditor).get("/api/audit/events.csv")
    assert leaked(b"".join(export.streaming_content).decode(), figures)


def test_it_redacts_each_event_kind_for_a_site_admin():
    mine = Disclosure(False, frozenset({1}), 3)
    other = {"site_id": 2, "site": "B", "num_examples": 9, "weight_norm": 1.5, "delta_norm": 0.5,
             "elapsed_seconds": 3.0, "received_at": "2026-12-02T10:00:00+00:00", "metrics": {"val_auc": 0.9}}
    assert disclose_event(EventKind.UPDATE_RECEIVED, other, mine) == {
        "site_id": 2, "site": "B", "num_examples": None, "weight_norm": None, "delta_norm": None,
        "elapsed_seconds": None, "received_at": None, "metrics": {}}
    assert disclose_event(EventKind.UPDATE_RECEIVED, {**other, "site_id": 1}, mine) == {**other, "site_id": 1}
    assert disclose_event(EventKind.UPDATE_RECEIVED, other, FULL) is other
    metrics = {"global": {"val_auc": 0.8}, "evaluated_by_site": {"1": {"val_auc": 0.7}, "2": {"val_auc": 0.9}},
               "sites": {"1": {"weight_norm": 1.0}, "2": {"weight_norm": 2.0}}, "global_weight_norm": 3.0}
    shown = disclose_event(EventKind.ROUND_METRICS, metrics, mine)
    assert shown["global"] == {} and "at least 3" in shown["global_suppressed"]
    assert shown["evaluated_by_site"] == {"1": {"val_auc": 0.7}} and shown["sites"] == {"1": {"weight_norm": 1.0}}
    assert shown["global_weight_norm"] == 3.0  # the model's own norm: everyone downloads the model
    three = {**metrics, "evaluated_by_site": {**metrics["evaluated_by_site"], "3": {"val_auc": 0.5}}}
    assert disclose_event(EventKind.ROUND_METRICS, three, mine)["global"] == {"val_auc": 0.8}
