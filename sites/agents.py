"""Who a site agent is while it talks to the coordinator: `request.user` on the agent API.

Not to be confused with `sites/agent/`, the Django-free program the hospital runs. An
`AgentPrincipal` acts for exactly one site, through one token. It is authenticated (DRF lets it
through `IsAuthenticated`-style checks that only ask that), but it is not a Django user: it holds
no role and no permission, so every user policy refuses it; the agent API decides through the gate,
for `principal.site`. Services record its events as actor kind "agent".
"""

from typing import Any

from django.contrib.auth.models import Group, Permission
from django.db.models.manager import EmptyManager

from consortium.audit.log import ActorRef
from consortium.audit.models import AuditActorKind
from sites.models import AgentToken, Site


class AgentPrincipal:
    """The site agent holding `token`, acting for `token.site`."""

    is_authenticated = True
    is_active = True
    is_anonymous = False
    is_staff = False
    is_superuser = False
    pk = None
    id = None
    # `consortium.roles.roles_of` reads this cache before it would query groups: an agent holds no role.
    _consortium_roles: frozenset[str] = frozenset()
    _groups = EmptyManager(Group)
    _user_permissions = EmptyManager(Permission)

    def __init__(self, token: AgentToken) -> None:
        self.token = token

    @property
    def site(self) -> Site:
        return self.token.site

    @property
    def site_id(self) -> int:
        return self.token.site_id

    @property
    def groups(self) -> EmptyManager:
        return self._groups

    @property
    def user_permissions(self) -> EmptyManager:
        return self._user_permissions

    @property
    def username(self) -> str:
        return self.get_username()

    def get_username(self) -> str:
        return f"agent:{self.site.code}:{self.token.prefix}"

    def audit_actor(self) -> ActorRef:
        """How `consortium.audit.log.record` names this actor: a site agent, no user behind it."""
        return ActorRef(kind=AuditActorKind.AGENT, label=self.get_username(), user_id=None)

    def has_perm(self, perm: str, obj: Any = None) -> bool:
        return False

    def has_perms(self, perm_list: Any, obj: Any = None) -> bool:
        return False

    def has_module_perms(self, app_label: str) -> bool:
        return False

    def get_all_permissions(self, obj: Any = None) -> set[str]:
        return set()

    def __str__(self) -> str:
        return self.get_username()

    def __repr__(self) -> str:
        return f"<AgentPrincipal {self.get_username()}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AgentPrincipal) and other.token.pk == self.token.pk

    def __hash__(self) -> int:
        return hash(("agent", self.token.pk))
