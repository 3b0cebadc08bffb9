"""A real headless browser (Playwright driving Debian's chromium): the PI and a DPO approve a study, the PI
activates it, site A's admin revokes participation, and the study page turns site A's checks red."""

import pytest

from studies import services
from studies.models import Study
from tests.base import approve_dpia, draft_study, govern_site, make_personas
from tests.browser.conftest import csp_violations, log_in, shot

pytestmark = pytest.mark.browser


def submitted_study(p) -> Study:
    study = draft_study(p, title="Sepsis risk (browser)")
    for site in (p.site_a, p.site_b):
        govern_site(p, study, site)
    approve_dpia(p, study)
    return services.study_submit(actor=p.pi, study=study)


def approve(page, base_url: str, study: Study, comment: str) -> None:
    page.goto(f"{base_url}/studies/{study.pk}/approve/")
    assert study.protocol_sha256() in page.inner_text('[data-testid="protocol-sha256"]')
    form = page.locator('form[data-action="approve"]')
    form.locator("textarea[name=comment]").fill(comment)
    form.locator("button[type=submit]").click()
    page.wait_for_url(f"{base_url}/studies/{study.pk}/")


def check(page, name: str, site: str):
    return page.locator(f'td[data-check="{name}"][data-site="{site}"]')


@pytest.mark.usefixtures("transactional_db")
def test_it_approves_activates_and_turns_a_revoked_sites_checks_red(live_server, browser):
    p = make_personas()
    study = submitted_study(p)
    base = live_server.url

    pi = log_in(browser, base, "pi")
    approve(pi, base, study, "Protocol as registered.")
    shot(pi, "1-pi-approved")

    dpo = log_in(browser, base, "dpo")
    approve(dpo, base, study, "DPIA covers this.")
    assert dpo.inner_text('[data-testid="study-status"]') == "Approved"
    assert "Both approvals are in" in dpo.inner_text(".messages")
    shot(dpo, "2-dpo-approved")

    pi.goto(f"{base}/studies/{study.pk}/")
    pi.click('form[data-action="activate"] button')
    pi.wait_for_selector('[data-testid="study-status"]:text-is("Active")')
    for site in ("amc", "charite"):
        for name in ("participation", "agreement_signed", "ethics"):
            assert check(pi, name, site).get_attribute("data-passed") == "true"
    shot(pi, "3-pi-activated")

    site_a = log_in(browser, base, "site_a_admin")
    site_a.goto(f"{base}/studies/{study.pk}/")
    revoke = site_a.locator('form[data-action="revoke"][data-site="amc"]')
    assert site_a.locator('form[data-action="revoke"][data-site="charite"]').count() == 0
    revoke.locator("textarea[name=reason]").fill("Consent withdrawn by the hospital board.")
    revoke.locator("button[type=submit]").click()
    site_a.wait_for_selector('td[data-check="participation"][data-site="amc"][data-passed="false"]')
    shot(site_a, "4-site-a-revoked")

    pi.reload()
    participation = check(pi, "participation", "amc")
    assert participation.get_attribute("data-passed") == "false"
    assert "revoked" in participation.inner_text().lower()
    assert "Consent withdrawn by the hospital board." in participation.inner_text()
    assert pi.locator('tr[data-site-row="amc"]').get_attribute("data-eligible") == "false"
    for name in ("participation", "agreement_signed", "ethics"):
        assert check(pi, name, "charite").get_attribute("data-passed") == "true"
    assert pi.locator('tr[data-site-row="charite"]').get_attribute("data-eligible") == "true"
    assert pi.locator('tr[data-check="quorum"]').get_attribute("data-passed") == "false"
    shot(pi, "5-pi-sees-site-a-red")
    assert [csp_violations(page) for page in (pi, dpo, site_a)] == [[], [], []]
