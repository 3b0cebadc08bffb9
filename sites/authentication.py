"""DRF authentication and permission for the agent API: `Authorization: Bearer cst_<prefix>_<secret>`.

Not a default authentication class: only the agent endpoints set
`authentication_classes = [AgentTokenAuthentication]` and `permission_classes = [IsAgent]`.
Every request re-reads the token, so a revocation is refused on the agent's very next request.
Bad (malformed, unknown, revoked or expired) tokens are throttled per client address
(AGENT_TOKEN_FAILURE_LIMIT per AGENT_TOKEN_LOCKOUT_MINUTES).
"""

from datetime import UTC

from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed, Throttled
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.views import APIView

from consortium.throttling import AGENT_TOKENS, client_ip
from sites.agents import AgentPrincipal
from sites.models import AgentToken
from sites.selectors import agent_token_identify
from sites.services import agent_token_authenticate

KEYWORD = "Bearer"
MALFORMED = "Malformed Authorization header: send 'Authorization: Bearer <agent token>'."
UNKNOWN = "Unknown agent token."
THROTTLED = ("Too many malformed, unknown or revoked agent tokens from this address: try again in {wait} s "
             "(Retry-After).")


def refusal(raw: str) -> str:
    """Why a presented token was refused, in words the site's admin can act on."""
    token = agent_token_identify(raw)
    if token is None:
        return UNKNOWN
    if token.is_revoked:
        return revoked_message(token)
    return expired_message(token)


def expired_message(token: AgentToken) -> str:
    return (f"This agent token expired on {token.expires_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC. Ask a site admin "
            "to rotate it (the site page) and give the agent the new token.")


def revoked_message(token: AgentToken) -> str:
    moment = token.revoked_at.astimezone(UTC) if token.revoked_at else None
    when = f"{moment:%Y-%m-%d %H:%M} UTC" if moment else "an unknown date"
    reason = token.revoke_reason.strip()
    return f"This agent token was revoked on {when}: {reason}{'' if reason.endswith(('.', '!', '?')) else '.'}"


class AgentTokenAuthentication(BaseAuthentication):
    """A site agent's bearer token: valid gives `(AgentPrincipal, AgentToken)`; malformed, unknown or
    revoked is a 401 that says which. No `Bearer` header at all lets other authenticators try."""

    def authenticate(self, request: Request) -> tuple[AgentPrincipal, AgentToken] | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != KEYWORD.lower().encode():
            return None
        address = client_ip(request)
        # An address that sent too many bad tokens waits, whatever it sends now: no token is even looked at.
        wait = AGENT_TOKENS.retry_after(address)
        if wait:
            raise Throttled(wait=wait, detail=THROTTLED.format(wait=wait))
        try:
            token = self._live_token(parts)
        except AuthenticationFailed:
            AGENT_TOKENS.failed(address)
            raise
        return AgentPrincipal(token), token

    @staticmethod
    def _live_token(parts: list[bytes]) -> AgentToken:
        """The live token the header carries; else AuthenticationFailed saying why not."""
        if len(parts) != 2:
            raise AuthenticationFailed(MALFORMED)
        try:
            raw = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise AuthenticationFailed(UNKNOWN) from None
        token = agent_token_authenticate(raw)
        if token is None:
            raise AuthenticationFailed(refusal(raw))
        return token

    def authenticate_header(self, request: Request) -> str:
        # Makes DRF answer 401 (not 403) to a missing or refused token, with a challenge that names the scheme.
        return KEYWORD


class IsAgent(BasePermission):
    """The caller is a site agent (authenticated by `AgentTokenAuthentication`), not a person."""

    message = "Only a site agent may call this endpoint: send 'Authorization: Bearer <agent token>'."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return isinstance(request.user, AgentPrincipal)
