"""The dashboard at many sites (`aggregation.site_summary`): past a dozen sites it summarises (the spread band
and the worst sites' lines, a page of heatmap and governance rows, worst first, a name filter) instead of one
line, legend entry and row per site; and its query count does not grow with the number of sites."""

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from aggregation.models import Round, Update
from aggregation.services import round_aggregate
from aggregation.site_summary import PAGE_SIZE, WORST_LINES
from sites.models import Site
from studies import services as study_services
from studies.models import Participation
from tests.aggregation.support import GOOD_METRICS, agent_for, open_round, submit
from tests.aggregation.test_views_dashboard import BASE_METRICS, dashboard_url, embedded
from tests.base import active_study, appoint_site_admin
from tests.pages import client_for, page


def _sites(p, count: int, prefix: str) -> list[Site]:
    """`count` sites beside A and B, administered by site B's admin (so the personas' helpers act for them)."""
    made = []
    for i in range(count):
        site = Site.objects.create(name=f"{prefix} {i:02d}", code=f"{prefix.lower()}{i:02d}", city="", country="NL")
        appoint_site_admin(p.admin, site, p.site_b_admin)
        made.append(site)
    return made


def _study_with_a_closed_round(p, sites: list[Site], title: str, *, silent: tuple[Site, ...] = ()):
    study = active_study(p, sites=tuple(sites), title=title, federated_statistics=False, num_features=4, quorum=2)
    round_ = open_round(study)
    for n, site in enumerate(sites):
        if site not in silent:
            submit(agent_for(p, site)[0], round_, metrics={**GOOD_METRICS, "base": {**BASE_METRICS,
                                                                                     "val_auc": 0.5 + n / 100}})
    if Round.objects.get(pk=round_.pk).status == "open":  # a silent site: the deadline would close it
        from django.db import transaction

        from aggregation.locks import lock_round
        from aggregation.services.rounds import _finish

        with transaction.atomic():
            _finish(lock_round(round_.pk), reason="Deadline passed.")
    round_aggregate(round_id=round_.pk)
    return study


def test_the_query_count_is_the_same_for_3_and_for_30_sites(p, model_store, django_assert_num_queries):
    small = _study_with_a_closed_round(p, [p.site_a, p.site_b, *_sites(p, 1, "Small")], "Three sites")
    large = _study_with_a_closed_round(p, [p.site_a, p.site_b, *_sites(p, 28, "Large")], "Thirty sites")
    client = client_for(p.pi)
    client.get(dashboard_url(small))  # warm caches that are not per request (content types)
    with CaptureQueriesContext(connection) as at_small:
        assert client.get(dashboard_url(small)).status_code == 200

    with django_assert_num_queries(len(at_small.captured_queries)):
        body = page(client.get(dashboard_url(large)))
    assert 'data-testid="site-summary"' in body and "30 sites" in body


def test_thirty_sites_are_summarised_worst_first_with_a_filter_and_pages(p, model_store):
    extra = _sites(p, 28, "Clinic")
    late = extra[5]
    study = _study_with_a_closed_round(p, [p.site_a, p.site_b, *extra], "Thirty sites", silent=(late,))
    revoked = extra[20]
    study_services.participation_revoke(actor=p.site_b_admin, reason="Withdrawn.",
                                        participation=Participation.objects.get(study=study, site=revoked))
    client = client_for(p.pi)

    body = page(client.get(dashboard_url(study)))

    figures, state = embedded(body, "dashboard-figures"), embedded(body, "dashboard-state")
    heatmap = figures["heatmap"]["data"][0]
    assert len(heatmap["y"]) == PAGE_SIZE and len(heatmap["z"]) == PAGE_SIZE
    assert heatmap["y"][:2] == [revoked.name, late.name]  # refused now first, then the round it missed
    lines = [t for t in figures["sites"]["data"] if str(t.get("meta", "")).startswith("site:")]
    assert 0 < len(lines) <= WORST_LINES
    assert any(str(t.get("meta")) == "band:min" for t in figures["sites"]["data"])
    assert state["summary"]["summarised"] and state["summary"]["pages"] == 2
    assert body.count('<tr data-site-id=') == PAGE_SIZE  # the governance panel's page
    second = embedded(page(client.get(dashboard_url(study) + "?page=2")), "dashboard-figures")
    assert len(second["heatmap"]["data"][0]["y"]) == 30 - PAGE_SIZE
    filtered = page(client.get(dashboard_url(study) + "?site=Clinic+0"))
    assert embedded(filtered, "dashboard-figures")["heatmap"]["data"][0]["y"] == sorted(
        [s.name for s in extra[:10]], key=lambda name: (name != late.name, name))
    assert filtered.count('<tr data-site-id=') == 10


def test_every_row_of_every_page_and_every_line_shows_what_its_site_sent(p, model_store):
    """An update's count, time and norm are read only for the sites a page shows: the rows of page 2 and of a
    filter, and the worst sites' lines, have them all the same."""
    study = _study_with_a_closed_round(p, [p.site_a, p.site_b, *_sites(p, 28, "Clinic")], "Thirty sites")
    norms = dict(Update.objects.filter(round__study=study).values_list("site_id", "weight_norm"))
    client = client_for(p.pi)
    for query in ("", "?page=2", "?site=Clinic+1"):
        figures = embedded(page(client.get(dashboard_url(study) + query)), "dashboard-figures")
        first_round = [row[0] for row in figures["heatmap"]["data"][0]["text"]]
        assert first_round and all(re.fullmatch(r"submitted: 10 examples, \d{4}-\d\d-\d\d \d\d:\d\d", cell)
                                   for cell in first_round), query
        lines = [t for t in figures["norms"]["data"] if str(t["meta"]).startswith("site:")]
        assert len(lines) == WORST_LINES and all(t["y"] == [norms[int(t["meta"][5:])]] for t in lines), query


@pytest.mark.parametrize("page_param", ["0", "999", "x", "-1"])
def test_an_out_of_range_page_shows_a_valid_page(p, model_store, page_param):
    study = _study_with_a_closed_round(p, [p.site_a, p.site_b, *_sites(p, 12, "Site")], "Fourteen sites")
    body = page(client_for(p.pi).get(dashboard_url(study) + f"?page={page_param}"))
    assert len(embedded(body, "dashboard-figures")["heatmap"]["data"][0]["y"]) == 14


def test_a_summary_bands_every_site_and_gives_the_page_what_it_needs_to_rank_the_worst_sites_live(p, model_store):
    extra = _sites(p, 12, "Clinic")
    late = extra[3]
    study = _study_with_a_closed_round(p, [p.site_a, p.site_b, *extra], "Fourteen sites", silent=(late,))

    body = page(client_for(p.pi).get(dashboard_url(study)))

    figures, state = embedded(body, "dashboard-figures"), embedded(body, "dashboard-state")
    traces = {str(t.get("meta")): t for t in figures["sites"]["data"]}
    summary = state["summary"]
    assert summary["line_site_ids"][0] == late.pk  # the worst: it missed the round (so it has no AUC to draw)
    lines = [meta for meta in traces if meta.startswith("site:")]
    assert lines == [f"site:{site_id}" for site_id in summary["line_site_ids"][1:]]
    # The band spans every site's AUC of v0 (0.50 to 0.63, the silent site's none), not only the lines' sites.
    assert traces["band:max"]["y"] == [0.63] and traces["band:min"]["y"] == [0.5]
    assert traces["band:min"]["text"] == ["13 sites, SD 0.042"]
    assert summary["worst_lines"] == WORST_LINES and summary["refused_site_ids"] == []
    assert summary["misses"][str(late.pk)] == 1 and sum(summary["misses"].values()) == 1
    assert summary["auc"][str(late.pk)] == [] and summary["auc"][str(extra[11].pk)] == [[0, 0.63]]
    assert len(summary["auc"]) == 14
