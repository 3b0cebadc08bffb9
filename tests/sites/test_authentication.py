"""The agent's credentials at the door: `AgentTokenAuthentication` and `IsAgent` on a test-only view,
`AgentPrincipal` as an audit actor that is no Django user, and the OpenAPI bearer scheme."""

import time

import pytest
from django.contrib.auth.models import AbstractBaseUser
from django.urls import path
from drf_spectacular.generators import SchemaGenerator
from rest_framework.authentication import SessionAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.test import APIClient
from rest_framework.views import APIView

from consortium.audit.log import record
from consortium.audit.models import AuditActorKind
from consortium.roles import roles_of, sees_everything
from sites.agents import AgentPrincipal
from sites.authentication import AgentTokenAuthentication, IsAgent
from sites.services import agent_token_revoke
from tests.api_support import assert_error
from tests.sites.agent_support import issue, secret_of
from tests.support import last_seq


class EchoApi(APIView):
    """Stands for the agent API: agent tokens only, agents only."""

    authentication_classes = [AgentTokenAuthentication]
    permission_classes = [IsAgent]

    def get(self, request: Request) -> Response:
        return Response({"user": request.user.get_username(), "site": request.user.site_id,
                         "token": request.auth.prefix})


class MixedApi(EchoApi):
    authentication_classes = [AgentTokenAuthentication, SessionAuthentication]


urlpatterns = [path("echo/", EchoApi.as_view()), path("mixed/", MixedApi.as_view())]
pytestmark = pytest.mark.urls(__name__)  # this module is the URLconf: the views above, through the whole stack


def call(authorization: str | None = None, url: str = "/echo/", user: AbstractBaseUser | None = None):
    api = APIClient()
    if user is not None:
        api.force_login(user)
    headers = {"HTTP_AUTHORIZATION": authorization} if authorization is not None else {}
    return api.get(url, **headers)


def refused(response, mentions: str) -> dict:
    """A 401 in JSON that challenges with the Bearer scheme and says why."""
    body = assert_error(response, 401, mentions=mentions)
    assert response["WWW-Authenticate"] == "Bearer"
    return body


def test_it_lets_a_valid_token_in_as_its_sites_agent(p):
    token, plaintext = issue(p)
    response = call(f"Bearer {plaintext}")
    assert response.status_code == 200
    assert response.json() == {"user": f"agent:amc:{token.prefix}", "site": p.site_a.pk, "token": token.prefix}
    assert call(f"bearer {plaintext}").status_code == 200  # the scheme name is case-insensitive (RFC 7235)


def test_it_answers_401_with_a_bearer_challenge_without_a_token(p):
    body = refused(call(), "credentials were not provided")
    assert body["error"] == "not_authenticated"


@pytest.mark.parametrize("header", ["Bearer", "Bearer a b", "Bearer  "])
def test_it_refuses_a_malformed_header(p, header):
    refused(call(header), "Malformed Authorization header")


@pytest.mark.parametrize("presented", ["nonsense", "cst_0123abcd_" + "x" * 43, "cst_0123abcd_tooshort"])
def test_it_refuses_an_unknown_token(p, presented):
    issue(p)
    body = refused(call(f"Bearer {presented}"), "Unknown agent token.")
    assert body["error"] == "authentication_failed"


def test_it_refuses_a_wrong_secret_for_a_real_prefix_as_unknown(p):
    token, plaintext = issue(p)
    refused(call(f"Bearer cst_{token.prefix}_{'A' * 43}"), "Unknown agent token.")


def test_it_refuses_a_revoked_token_on_the_next_request_and_says_why(p):
    token, plaintext = issue(p)
    assert call(f"Bearer {plaintext}").status_code == 200
    agent_token_revoke(actor=p.site_a_admin, token=token, reason="Laptop stolen")
    token.refresh_from_db()
    body = refused(call(f"Bearer {plaintext}"), "This agent token was revoked on ")
    assert body["detail"] == f"This agent token was revoked on {token.revoked_at:%Y-%m-%d %H:%M} UTC: Laptop stolen."


def test_it_leaves_other_schemes_to_other_authenticators(p):
    """A user's own API token is not an agent token: `Token ...` is not ours to judge, and IsAgent refuses."""
    user_token = Token.objects.create(user=p.site_a_admin)
    refused(call(f"Token {user_token.key}"), "credentials were not provided")
    refused(call(f"Bearer {user_token.key}"), "Unknown agent token.")


def test_it_refuses_a_person_even_when_authenticated_otherwise(p):
    assert_error(call(url="/mixed/", user=p.site_a_admin), 403, "permission_denied", mentions="Only a site agent")


@pytest.mark.urls("consortium.urls")
def test_it_does_not_open_the_peoples_api_to_agents(p):
    """The agent token is not a default authentication class: /api/sites/ does not know it."""
    _, plaintext = issue(p)
    response = APIClient().get("/api/sites/", HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    assert response.status_code == 401


def test_it_records_the_agents_events_as_the_agent_of_its_site(p):
    token, _ = issue(p)
    principal = AgentPrincipal(token)
    event = record(actor=principal, action="tests.agent.did", site=principal.site)
    assert (event.actor_kind, event.actor_user_id) == (AuditActorKind.AGENT, None)
    assert event.actor_label == f"agent:amc:{token.prefix}" == principal.get_username()
    assert event.site_id == p.site_a.pk


def test_it_is_authenticated_but_holds_no_right_of_a_person(p):
    token, plaintext = issue(p)
    principal = AgentPrincipal(token)
    assert (principal.is_authenticated, principal.is_active, principal.is_anonymous) == (True, True, False)
    assert principal.pk is None and not isinstance(principal, AbstractBaseUser)
    assert (principal.site, principal.site_id, principal.token) == (p.site_a, p.site_a.pk, token)
    assert not principal.has_perm("sites.administer_site", p.site_a) and not principal.has_perm("sites.view_site")
    assert not principal.has_perms(["sites.administer_site"]) and not principal.has_module_perms("sites")
    assert roles_of(principal) == frozenset() and not sees_everything(principal)
    assert not principal.is_staff and not principal.is_superuser
    assert secret_of(plaintext) not in repr(principal) + str(principal)


def test_it_compares_principals_by_token(p):
    token, _ = issue(p)
    other, _ = issue(p, name="Second box")
    assert AgentPrincipal(token) == AgentPrincipal(token) and AgentPrincipal(token) != AgentPrincipal(other)
    assert len({AgentPrincipal(token), AgentPrincipal(token)}) == 1


def test_it_writes_no_audit_event_when_an_agent_authenticates(p):
    _, plaintext = issue(p)
    mark = last_seq()
    assert call(f"Bearer {plaintext}").status_code == 200
    assert last_seq() == mark


def test_it_documents_the_bearer_scheme_in_the_openapi_schema():
    schema = SchemaGenerator(patterns=[path("echo/", EchoApi.as_view())]).get_schema(request=None, public=True)
    assert schema["components"]["securitySchemes"]["agentToken"]["scheme"] == "bearer"
    assert schema["components"]["securitySchemes"]["agentToken"]["type"] == "http"
    assert schema["paths"]["/echo/"]["get"]["security"] == [{"agentToken": []}]


# --- Throttling bad tokens per address ------------------------------------------------------------------

AGENT_LIMIT = 10  # AGENT_TOKEN_FAILURE_LIMIT's default


def call_from(address: str, authorization: str):
    return APIClient(REMOTE_ADDR=address).get("/echo/", HTTP_AUTHORIZATION=authorization)


def test_it_throttles_an_address_that_sends_bad_tokens_even_when_it_then_sends_a_good_one(p, settings):
    assert settings.AGENT_TOKEN_FAILURE_LIMIT == AGENT_LIMIT
    _, plaintext = issue(p)
    for _ in range(AGENT_LIMIT):
        refused(call_from("203.0.113.9", "Bearer cst_0123abcd_" + "x" * 43), "Unknown agent token.")
    throttled = call_from("203.0.113.9", f"Bearer {plaintext}")
    body = assert_error(throttled, 429, "throttled", mentions="Too many malformed, unknown or revoked agent tokens")
    wait = int(throttled["Retry-After"])
    assert settings.AGENT_TOKEN_LOCKOUT_MINUTES * 60 - 5 <= wait <= settings.AGENT_TOKEN_LOCKOUT_MINUTES * 60
    assert f"{wait} s" in body["detail"]
    assert call_from("198.51.100.7", f"Bearer {plaintext}").status_code == 200, "another address is not affected"


def test_malformed_and_revoked_tokens_count_too_and_good_ones_do_not(p):
    token, plaintext = issue(p)
    for _ in range(AGENT_LIMIT * 2):
        assert call_from("203.0.113.9", f"Bearer {plaintext}").status_code == 200
    agent_token_revoke(actor=p.site_a_admin, token=token, reason="Laptop stolen")
    for i in range(AGENT_LIMIT):
        header = "Bearer a b" if i % 2 else f"Bearer {plaintext}"
        assert call_from("203.0.113.9", header).status_code == 401
    assert call_from("203.0.113.9", "Bearer anything").status_code == 429


def test_the_throttle_ends_with_its_window(p, monkeypatch, settings):
    _, plaintext = issue(p)
    for _ in range(AGENT_LIMIT):
        call_from("203.0.113.9", "Bearer nonsense")
    assert call_from("203.0.113.9", f"Bearer {plaintext}").status_code == 429
    later = time.time() + settings.AGENT_TOKEN_LOCKOUT_MINUTES * 60 + 1
    monkeypatch.setattr("consortium.throttling.time.time", lambda: later)
    assert call_from("203.0.113.9", f"Bearer {plaintext}").status_code == 200


def test_behind_a_proxy_it_throttles_the_client_not_the_proxy(p, settings):
    settings.PROXY_COUNT = 1
    _, plaintext = issue(p)

    def via_proxy(client: str, authorization: str):
        # The client may send its own X-Forwarded-For; the proxy appends the address it saw.
        return APIClient(REMOTE_ADDR="10.0.0.1").get(
            "/echo/", HTTP_AUTHORIZATION=authorization, HTTP_X_FORWARDED_FOR=f"198.51.100.1, {client}")

    for _ in range(AGENT_LIMIT):
        via_proxy("203.0.113.9", "Bearer nonsense")
    assert via_proxy("203.0.113.9", f"Bearer {plaintext}").status_code == 429
    assert via_proxy("203.0.113.10", f"Bearer {plaintext}").status_code == 200
