"""The rounds page's Flower coordinator section: the study's PI issues the token (shown once) and revokes it;
nobody else sees or touches it."""

from django.urls import reverse

from aggregation.models import FlowerCoordinatorToken
from tests.aggregation.support import governed_study
from tests.pages import client_for, page


def test_the_pi_issues_the_coordinator_token_once_and_revokes_it(p):
    study = governed_study(p)
    body = page(client_for(p.pi).post(reverse("aggregation:flower-token-issue", args=[study.pk]),
                                      {"name": "SuperLink at the AMC"}))
    token = FlowerCoordinatorToken.objects.get()
    assert "it will not be shown again" in body and f"csf_{token.prefix}_" in body
    rounds = page(client_for(p.pi).get(reverse("aggregation:rounds", args=[study.pk])))
    assert "Flower coordinator" in rounds and token.prefix in rounds and "csf_" not in rounds
    client_for(p.pi).post(reverse("aggregation:flower-token-revoke", args=[study.pk, token.pk]), {"reason": "Done"})
    token.refresh_from_db()
    assert token.is_revoked and token.revoke_reason == "Done"


def test_nobody_else_sees_or_issues_it(p):
    study = governed_study(p)
    assert "Flower coordinator" not in page(client_for(p.dpo).get(reverse("aggregation:rounds", args=[study.pk])))
    response = client_for(p.site_a_admin).post(reverse("aggregation:flower-token-issue", args=[study.pk]),
                                               {"name": "x"})
    assert response.status_code == 403 and not FlowerCoordinatorToken.objects.exists()
