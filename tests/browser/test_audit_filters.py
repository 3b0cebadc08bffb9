"""The audit page in a real browser: an auditor picks a study by its title, a site, a person, an outcome and a
date range from form fields, sees only the matching events with their details as labelled fields, and a
window that ends before it starts is refused with a message, listing nothing."""

from datetime import timedelta

import pytest
from django.utils import timezone

from consortium.audit.keys import fingerprint
from consortium.audit.log import record
from consortium.audit.models import AuditOutcome
from studies import services
from tests.base import draft_study, make_personas
from tests.browser.conftest import csp_violations, log_in, shot

pytestmark = pytest.mark.browser


def rows(page) -> list[tuple[str, str]]:
    return [(row.get_attribute("data-seq"), row.get_attribute("data-outcome"))
            for row in page.locator("tbody tr[data-seq]").all()]


@pytest.mark.usefixtures("transactional_db")
def test_an_auditor_filters_the_log_with_form_fields_and_reads_details_as_fields(live_server, browser):
    p = make_personas()
    study = draft_study(p, title="Sepsis onset (audit filters)")
    other = draft_study(p, title="Other study")
    services.participation_invite(actor=p.pi, study=study, site=p.site_a)
    services.participation_invite(actor=p.pi, study=other, site=p.site_a)
    denied = record(actor=p.site_a_admin, action="studies.dpia.viewed", study=study, site=p.site_a,
                    outcome=AuditOutcome.DENIED, details={"reason": "Not this site's study.", "code": "not_found"})
    base = live_server.url

    page = log_in(browser, base, "auditor")
    page.goto(f"{base}/audit/")
    assert fingerprint() in page.inner_text('[data-testid="audit-key"]')
    form = page.locator('[data-testid="audit-filters"]')
    form.locator("select[name=study]").select_option(label="Sepsis onset (audit filters)")
    form.locator("select[name=site]").select_option(label=p.site_a.name)
    form.locator("select[name=actor]").select_option(label="site_a_admin")
    form.locator("select[name=outcome]").select_option(label="Denied")
    now = timezone.localtime()
    form.locator("input[name=since]").fill((now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"))
    form.locator("input[name=until]").fill((now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"))
    form.locator("button[type=submit]").click()
    page.wait_for_url("**/audit/?*")
    assert rows(page) == [(str(denied.seq), "denied")]
    details = page.locator(f'tr[data-seq="{denied.seq}"] dl.details')
    assert details.locator("dt").all_inner_texts() == ["Code", "Reason"]  # stored with sorted keys
    assert details.locator("dd").all_inner_texts() == ["not_found", "Not this site's study."]
    shot(page, "audit-filtered")

    # Only the study, now: both of its events by the PI, and the denied one, newest first.
    page.goto(f"{base}/audit/")
    page.locator("select[name=study]").select_option(label="Sepsis onset (audit filters)")
    page.locator('[data-testid="audit-filters"] button[type=submit]').click()
    page.wait_for_url("**/audit/?*")
    listed = [seq for seq, _ in rows(page)]
    assert str(denied.seq) in listed and listed == sorted(listed, key=int, reverse=True)
    assert all(cell == str(study.pk) for cell in page.locator("tbody tr[data-seq] td:nth-child(7)").all_inner_texts())

    # A window that ends before it starts is refused, and nothing is listed.
    page.locator("input[name=since]").fill((now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"))
    page.locator("input[name=until]").fill((now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"))
    page.locator('[data-testid="audit-filters"] button[type=submit]').click()
    page.wait_for_selector("text='From' must be before 'Until'.")
    assert rows(page) == [] and "No events match." in page.inner_text("tbody")
    assert csp_violations(page) == []
