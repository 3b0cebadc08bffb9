"""A site admin's live dashboard in a real browser (disclosure control, `studies.disclosure`): the charts hold
their own site's lines and no other site's, no min-max band (a minimum is one site's value), no global point
pooled over fewer than k sites, and nothing of another site's figures anywhere in the page; an event about
another site, redacted by the server's policy as the websocket sends it, is drawn as a state without figures
and without an error. The PI's dashboard of the same study shows every site."""

import json
import re

import pytest

from studies.disclosure import disclose_message, disclosure_for
from studies.models import StudyEvent
from tests.aggregation.test_disclosure import b_figures, leaked, two_rounds
from tests.base import make_personas
from tests.browser.conftest import csp_violations, log_in, shot

pytestmark = pytest.mark.browser

METAS = """(chart) => document.querySelector("#chart-" + chart).data.map((t) => String(t.meta || ""))"""
# What the page shows and holds: its text and every chart's data (not the SVG's drawing coordinates).
SHOWN = """() => document.body.innerText + JSON.stringify(Array.from(document.querySelectorAll(".js-plotly-plot"))
  .map((gd) => gd.data))"""


@pytest.fixture
def federation(transactional_db):
    """Personas and a study with two aggregated rounds, made before the browser starts its event loop."""
    p = make_personas()
    study = two_rounds(p)
    return p, study, b_figures(study, p)


def test_a_site_admins_dashboard_shows_only_its_own_sites_figures(federation, live_server, browser):
    p, study, figures = federation
    # A real event about site B, as the server's policy hands it to site A's admin over the websocket.
    event = StudyEvent.objects.filter(study=study, kind="update.received", payload__site_id=p.site_b.pk).last()
    redacted = disclose_message(event.as_message(), disclosure_for(p.site_a_admin, study))
    redacted = {**redacted, "id": 10**6, "data": {**redacted["data"], "round": 3}}
    assert redacted["data"]["num_examples"] is None

    def stream(ws) -> None:
        ws.send(json.dumps({"type": "hello", "study": study.pk, "last_id": 10**6 - 1, "after": 10**6 - 1}))
        ws.send(json.dumps(redacted))

    admin = log_in(browser, live_server.url, "site_a_admin")
    admin.route_web_socket(re.compile(r"/ws/studies/"), stream)
    admin.goto(f"{live_server.url}/studies/{study.pk}/dashboard/")
    admin.wait_for_selector('[data-testid="connection"][data-state="live"]')
    admin.wait_for_function("() => document.querySelector('#chart-heatmap').data[0].x.includes(3)")

    own, other = f"site:{p.site_a.pk}", f"site:{p.site_b.pk}"
    for chart in ("sites", "norms", "elapsed"):  # (no update here was timed: the elapsed chart has no line)
        metas = admin.evaluate(METAS, chart)
        assert (own in metas or chart == "elapsed") and other not in metas, chart
        assert not any(meta.startswith("band:") for meta in metas), chart
    assert admin.locator('[data-testid="metric-chart"]').get_attribute("data-points") == "0"
    assert leaked(admin.evaluate(SHOWN), figures) == []
    assert admin.locator("#chart-heatmap").is_visible() and csp_violations(admin) == []
    shot(admin, "disclosure-site-admin-dashboard")

    pi = log_in(browser, live_server.url, "pi")
    pi.goto(f"{live_server.url}/studies/{study.pk}/dashboard/")
    pi.wait_for_selector("#chart-norms .legendtext")
    metas = pi.evaluate(METAS, "norms")
    assert own in metas and other in metas
    assert leaked(pi.evaluate(SHOWN), figures)
