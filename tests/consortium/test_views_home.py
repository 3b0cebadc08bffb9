from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from studies import services
from studies.governance import evaluate
from tests.base import active_study, draft_study
from tests.pages import client_for, page


def test_it_sends_anonymous_visitors_to_the_login_page(client):
    response = client.get(reverse("home"))
    assert response.status_code == 302 and reverse("login") in response["Location"]


def test_it_shows_each_visible_study_with_its_eligible_sites_today(p):
    active = active_study(p, title="Active study")
    services.participation_revoke(actor=p.site_b_admin, participation=active.participations.get(site=p.site_b),
                                  reason="Consent withdrawn")
    draft_study(p, title="Draft study")
    body = page(client_for(p.pi).get(reverse("home")))
    assert "Active study" in body and "Draft study" in body
    # Site B revoked: the gate lists it (in red) but its quorum counts only site A, and so does the page.
    quorum = next(check for check in evaluate(active).study_checks if check.name == "quorum")
    assert quorum.reason.startswith("1 of 1 sites eligible") and "<td>1 of 1 sites" in body
    assert "Active study" not in page(client_for(p.outsider).get(reverse("home")))


def test_it_keeps_the_home_query_count_flat_as_studies_grow(p, django_assert_max_num_queries):
    active_study(p, title="First")
    client = client_for(p.dpo)
    client.get(reverse("home"))  # warm caches that are not per request (content types)
    with CaptureQueriesContext(connection) as with_one:
        assert client.get(reverse("home")).status_code == 200
    for n in range(4):
        active_study(p, title=f"More {n}")
    with django_assert_max_num_queries(len(with_one.captured_queries)):
        body = page(client.get(reverse("home")))
    assert body.count("2 of 2 sites") == 5
