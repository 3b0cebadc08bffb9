"""Who a study's Flower coordinator is on the Flower API (`/api/agent/flower/`): `Authorization: Bearer
csf_<prefix>_<secret>`, a token the study's PI issued (`aggregation.services.flower.flower_token_create`).

The format follows the agent tokens' (`sites.tokens`: 32 random bytes from `secrets`, SHA-256 stored, the
prefix finds the row) with its own scheme, so neither kind of token is ever taken for the other. A
`FlowerCoordinator` acts for one study, holds no role and no permission; the services ask the gate."""

import hmac
import re
from datetime import UTC

from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed, Throttled
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.views import APIView

from aggregation.models import FlowerCoordinatorToken
from consortium.audit.log import ActorRef
from consortium.audit.models import AuditActorKind
from consortium.throttling import AGENT_TOKENS, client_ip
from sites import tokens

SCHEME = "csf"
_FORMAT = re.compile(r"^csf_(?P<prefix>[0-9a-f]{8})_(?P<secret>[A-Za-z0-9_-]{43})$")
MALFORMED = "Malformed Authorization header: send 'Authorization: Bearer <Flower coordinator token>'."
UNKNOWN = "Unknown Flower coordinator token."


def assemble(prefix: str, secret: str) -> str:
    return f"{SCHEME}_{prefix}_{secret}"


def identify(raw: str) -> FlowerCoordinatorToken | None:
    """The token a presented string belongs to, revoked or not; None if malformed or no stored hash matches."""
    match = _FORMAT.match(raw.strip())
    if match is None:
        return None
    token = FlowerCoordinatorToken.objects.select_related("study").filter(prefix=match["prefix"]).first()
    if token is None or not hmac.compare_digest(tokens.hash_secret(match["secret"]), token.key_hash):
        return None
    return token


class FlowerCoordinator:
    """The Flower coordinator holding `token`, acting for `token.study` only."""

    is_authenticated = True
    is_active = True
    is_anonymous = False
    is_staff = False
    is_superuser = False
    pk = None
    id = None
    _consortium_roles: frozenset[str] = frozenset()

    def __init__(self, token: FlowerCoordinatorToken) -> None:
        self.token = token

    @property
    def study_id(self) -> int:
        return self.token.study_id

    def get_username(self) -> str:
        return f"flower:study{self.token.study_id}:{self.token.prefix}"

    def audit_actor(self) -> ActorRef:
        # A machine acting for the study, not a person: recorded as an agent, named as the Flower coordinator.
        return ActorRef(kind=AuditActorKind.AGENT, label=self.get_username(), user_id=None)

    def has_perm(self, perm: str, obj: object = None) -> bool:
        return False

    def __str__(self) -> str:
        return self.get_username()


class FlowerTokenAuthentication(BaseAuthentication):
    """A live coordinator token gives `(FlowerCoordinator, token)`; a malformed, unknown or revoked one is a
    401 saying which, and counts towards the same per-address lockout as bad agent tokens."""

    def authenticate(self, request: Request) -> tuple[FlowerCoordinator, FlowerCoordinatorToken] | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != b"bearer":
            return None
        address = client_ip(request)
        wait = AGENT_TOKENS.retry_after(address)
        if wait:
            raise Throttled(wait=wait)
        try:
            token = self._live(parts)
        except AuthenticationFailed:
            AGENT_TOKENS.failed(address)
            raise
        return FlowerCoordinator(token), token

    @staticmethod
    def _live(parts: list[bytes]) -> FlowerCoordinatorToken:
        if len(parts) != 2:
            raise AuthenticationFailed(MALFORMED)
        try:
            token = identify(parts[1].decode("ascii"))
        except UnicodeDecodeError:
            token = None
        if token is None:
            raise AuthenticationFailed(UNKNOWN)
        if token.is_revoked:
            when = f"{token.revoked_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
            raise AuthenticationFailed(f"This Flower coordinator token was revoked on {when}: {token.revoke_reason}")
        return token

    def authenticate_header(self, request: Request) -> str:
        return "Bearer"


class IsFlowerCoordinator(BasePermission):
    message = "Only a study's Flower coordinator may call this endpoint: send its token as a Bearer token."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return isinstance(request.user, FlowerCoordinator)
