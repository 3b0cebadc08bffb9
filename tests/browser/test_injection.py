"""Untrusted text in a real browser: every class of injection payload goes, through the services, into every
free-text field (study title, clinical question, site name, participation reason, ethics reference, DPIA
summary, DUA text, approval and DPIA comments, agent token name), then each page is opened as the people who
see it. No dialog may open, no element of the payload may exist, `{{7*7}}` stays as written, the charts show
the names as written (plotly.js reads neither markup nor `%{...}` in them), and the Content-Security-Policy
reports no violation on any page, the Django admin and Swagger UI included."""

import json
import re
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from aggregation.models import Round
from aggregation.services import round_aggregate
from sites.services import agent_token_create, site_update
from studies import services
from studies.models import Participation, Study
from tests.aggregation.support import agent_for, open_round, submit
from tests.base import PASSWORD, Personas, accept_protocol, make_personas, register_dataset
from tests.browser.conftest import csp_violations, log_in, shot, watched_page

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("model_store", "no_broker")]

# One string per field carrying every class: a script element, breaking out of an attribute into an element
# with a handler, a plotly.js placeholder, a template expression and a javascript: URL.
PAYLOAD = '<script>alert(1)</script>"><img src=x onerror=alert(2)>%{customdata}{{7*7}}javascript:alert(3)'
SITE_A, SITE_B = f"{PAYLOAD} A", f"{PAYLOAD} B"

# Anything the payload could have made in a page (JSON data blocks hold the text as data, which is fine).
INJECTED = """() => [
  ...document.querySelectorAll('img[src="x"], [onerror], a[href^="javascript:" i], svg a[href^="javascript:" i]'),
  ...Array.from(document.querySelectorAll('script:not([type="application/json"])'))
    .filter((s) => /alert\\(/.test(s.textContent)),
].map((e) => e.outerHTML.slice(0, 120))"""


def governed_with_payloads(p: Personas) -> Study:
    """An active study whose every free-text field, and both sites' names, carry the payload; one round
    aggregated into v1, a second open with site B suspended (its reason, too)."""
    site_update(actor=p.admin, site=p.site_a, name=SITE_A)
    site_update(actor=p.admin, site=p.site_b, name=SITE_B)
    study = services.study_create(actor=p.pi, title=PAYLOAD, clinical_question=PAYLOAD, agreement_text=PAYLOAD,
                                  quorum=1, federated_statistics=False, num_features=4)
    now = timezone.now()
    for site in (p.site_a, p.site_b):
        admin = p.site_admin_of(site)
        participation = services.participation_invite(actor=p.pi, study=study, site=site)
        services.participation_grant(actor=admin, participation=participation, reason=PAYLOAD)
        services.agreement_sign(actor=admin, agreement=study.agreement_versions.get(), participation=participation)
        services.ethics_record(actor=admin, participation=participation, reference=PAYLOAD,
                               valid_from=now - timedelta(days=1), valid_until=now + timedelta(days=365))
        agent_token_create(actor=admin, site=site, name=PAYLOAD)
        accept_protocol(admin, participation)
        register_dataset(p, study, site)
    services.dpia_save(actor=p.dpo, study=study, summary=PAYLOAD, risk_level="medium",
                       valid_until=now + timedelta(days=365))
    services.dpia_submit(actor=p.dpo, study=study)
    services.dpia_approve(actor=p.dpo2, study=study, comment=PAYLOAD)
    services.study_submit(actor=p.pi, study=study)
    services.study_approve(actor=p.pi, study=study, comment=PAYLOAD)
    services.study_approve(actor=p.dpo, study=study, comment=PAYLOAD)
    services.study_activate(actor=p.pi, study=study)
    first = open_round(study)
    for site in (p.site_a, p.site_b):
        submit(agent_for(p, site)[0], first)
    assert round_aggregate(round_id=first.pk) is not None
    second = Round.objects.get(study=study, number=2)  # the aggregation opened it
    submit(agent_for(p, p.site_a)[0], second)
    services.participation_suspend(actor=p.site_b_admin, reason=PAYLOAD,
                                   participation=Participation.objects.get(study=study, site=p.site_b))
    return study


def pages_of(p: Personas, study: Study) -> dict[str, list[str]]:
    """Who opens which page."""
    s = f"/studies/{study.pk}"
    return {
        "pi": ["/", "/studies/", f"{s}/", f"{s}/approve/", f"{s}/agreement/", f"{s}/dashboard/",
               "/overview/", f"{s}/rounds/", f"{s}/versions/1/", "/api/docs/"],
        "dpo": [f"{s}/dpia/", f"{s}/approve/", "/audit/"],
        "site_a_admin": ["/", f"/sites/{p.site_a.pk}/", f"{s}/", f"{s}/dashboard/"],
        "auditor": ["/audit/", f"{s}/"],
        "superuser": ["/admin/", "/admin/sites/site/", f"/admin/sites/site/{p.site_a.pk}/change/",
                      "/admin/studies/study/", f"/admin/studies/study/{study.pk}/change/",
                      "/admin/consortium/auditevent/"],
    }


def open_and_check(page, url: str, problems: list[str]) -> None:
    response = page.goto(url)
    page.wait_for_load_state("networkidle")
    if response is None or response.status != 200:
        problems.append(f"{url}: HTTP {response.status if response else 'none'}")
    elif "script-src 'self'" not in (response.headers.get("content-security-policy") or ""):
        problems.append(f"{url}: no Content-Security-Policy")
    injected = page.evaluate(INJECTED)
    if injected:
        problems.append(f"{url}: injected {injected}")
    if "customdata}49" in page.inner_text("body"):
        problems.append(f"{url}: a template evaluated {{{{7*7}}}}")
    problems.extend(f"{url}: CSP {violation}" for violation in csp_violations(page))
    problems.extend(f"{url}: dialog {dialog}" for dialog in page.dialogs)
    page.csp_console.clear()
    page.dialogs.clear()


@pytest.fixture
def hostile(transactional_db) -> tuple[Personas, Study]:
    """The personas (and a superuser) and the study full of payloads, made before the browser starts (its
    event loop would keep the services' on-commit broadcasts from running in this thread)."""
    p = make_personas()
    get_user_model().objects.create_superuser("superuser", "root@example.org", PASSWORD)
    return p, governed_with_payloads(p)


def test_no_payload_runs_or_renders_as_markup_on_any_page(hostile, live_server, browser):
    p, study = hostile
    base, problems = live_server.url, []
    anonymous = watched_page(browser)
    open_and_check(anonymous, f"{base}/accounts/login/", problems)
    for username, urls in pages_of(p, study).items():
        page = log_in(browser, base, username)
        for url in urls:
            open_and_check(page, base + url, problems)
        if username == "pi":
            page.goto(f"{base}/studies/{study.pk}/")
            assert PAYLOAD in page.inner_text("h1"), "the title shows as written"
        page.context.close()
    assert problems == []


def hover_text(page, chart: str, meta: str) -> str:
    """Hover the first point of the trace tagged `meta` and return the hover label's text."""
    return page.evaluate("""([chart, meta]) => {
        const gd = document.getElementById("chart-" + chart);
        const curve = gd.data.findIndex((t) => t.meta === meta);
        window.Plotly.Fx.hover(gd, [{curveNumber: curve, pointNumber: 0}]);
        return gd.querySelector(".hoverlayer text.nums").textContent;
    }""", [chart, meta])


def chart_labels(page, chart: str) -> list[str]:
    return page.evaluate("""(chart) => Array.from(document.querySelectorAll(
        "#chart-" + chart + " .legendtext, #chart-" + chart + " .ytick text")).map((e) => e.textContent)""", chart)


def test_the_charts_show_site_names_as_written_first_render_and_live(hostile, live_server, browser):
    """The server's figures, and the traces the page adds from the event stream (a websocket served by the
    test, so the names come through `static/js/dashboard.js`)."""
    p, study = hostile
    live_name = '%{y} <b>bold</b> <a href="javascript:alert(4)">link</a> & Co'
    sent: list[str] = []

    next_id = 10**6  # past anything the page has seen (the page itself may add events as it renders)

    def stream(ws) -> None:
        ws.send(json.dumps({"type": "hello", "study": study.pk, "last_id": next_id - 1, "after": next_id - 1}))
        event = {"type": "event", "id": next_id, "kind": "update.received", "at": timezone.now().isoformat(),
                 "text": "A new site submitted.", "tone": "good",
                 "data": {"round": 2, "round_id": 0, "kind": "training", "site_id": 987654, "site": live_name,
                          "received_at": timezone.now().isoformat(), "elapsed_seconds": 12.5,
                          "num_examples": 10, "weight_norm": 3.25, "submitted": 2, "eligible": 2}}
        ws.send(json.dumps(event))
        sent.append(event["kind"])

    pi = log_in(browser, live_server.url, "pi")
    pi.route_web_socket(re.compile(r"/ws/studies/"), stream)
    pi.goto(f"{live_server.url}/studies/{study.pk}/dashboard/")
    pi.wait_for_selector('[data-testid="connection"][data-state="live"]')

    assert hover_text(pi, "norms", f"site:{p.site_a.pk}").startswith(f"{SITE_A}: ")
    assert SITE_A in chart_labels(pi, "norms") and SITE_A in chart_labels(pi, "heatmap")

    pi.wait_for_function("() => document.querySelector('#chart-elapsed').data.some((t) => t.meta === 'site:987654')")
    assert sent == ["update.received"]
    assert hover_text(pi, "elapsed", "site:987654").startswith(f"{live_name}: 12.500 s")
    assert live_name in chart_labels(pi, "norms") and live_name in chart_labels(pi, "heatmap")
    assert pi.locator("#dashboard svg a").count() == 0, "no link made of a name"
    assert pi.evaluate(INJECTED) == [] and pi.dialogs == [] and csp_violations(pi) == []
    shot(pi, "injection-dashboard")
