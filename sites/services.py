"""Every write to sites: creating them, appointing or removing their admins, and their agent tokens."""

from collections.abc import Iterable
from datetime import timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q
from django.utils import timezone
from guardian.shortcuts import assign_perm, remove_perm

from consortium.audit.log import audited_service, record
from consortium.audit.services import user_roles_add
from consortium.errors import Conflict, Forbidden, InvalidTransition, NotFound, ValidationFailed
from consortium.locks import locked
from consortium.roles import Role
from sites import tokens
from sites.audit_actions import SiteAction
from sites.models import AgentToken, Site
from sites.permissions import ADMINISTER_SITE, can_administer, can_manage_sites, sites_for
from sites.selectors import agent_token_identify

SITE_FIELDS = ("name", "code", "city", "country", "timezone")
# An agent polls every few seconds; remembering its last request to the minute costs one write a minute.
LAST_SEEN_RESOLUTION = timedelta(minutes=1)


def _require_manager(actor: AbstractBaseUser) -> None:
    if not can_manage_sites(actor):
        raise Forbidden("Only consortium admins manage sites.")


@audited_service(SiteAction.SITE_CREATE)
def site_create(
    *,
    actor: AbstractBaseUser,
    name: str,
    code: str,
    city: str = "",
    country: str = "",
    timezone: str = "Europe/Amsterdam",
) -> Site:
    """Register a hospital site."""
    _require_manager(actor)
    site = Site(name=name, code=code, city=city, country=country, timezone=timezone)
    site.full_clean()
    site.save()
    record(actor=actor, action=SiteAction.SITE_CREATED, target=site, site=site, details={"after": _snapshot(site)})
    return site


@audited_service(SiteAction.SITE_UPDATE)
def site_update(*, actor: AbstractBaseUser, site: Site, **changes: str) -> Site:
    """Change a site's descriptive fields."""
    _require_manager(actor)
    site = locked(Site.objects.filter(pk=site.pk)).get()
    before = _snapshot(site)
    for field, value in changes.items():
        if field not in SITE_FIELDS:
            raise ValueError(f"{field} is not an editable site field")
        setattr(site, field, value)
    site.full_clean()
    site.save()
    record(actor=actor, action=SiteAction.SITE_UPDATED, target=site, site=site,
           details={"before": before, "after": _snapshot(site)})
    return site


@audited_service(SiteAction.ADMIN_ASSIGN)
def site_admin_assign(*, actor: AbstractBaseUser, site: Site, user: AbstractBaseUser) -> None:
    """Make `user` an admin of `site`: the Site admin role plus the object permission, together."""
    _require_manager(actor)
    if can_administer(user, site):
        raise Conflict(f"{user.get_username()} already administers {site}.", site=site)
    assign_perm(f"sites.{ADMINISTER_SITE}", user, site)
    record(actor=actor, action=SiteAction.ADMIN_ASSIGNED, target=site, site=site,
           details={"user": user.get_username(), "user_id": user.pk})
    # The global role comes with the appointment; a role change is recorded as such (once, the first time).
    user_roles_add(actor=actor, user=user, roles=[Role.SITE_ADMIN.value], via=SiteAction.ADMIN_ASSIGN)


@audited_service(SiteAction.ADMIN_REMOVE)
def site_admin_remove(*, actor: AbstractBaseUser, site: Site, user: AbstractBaseUser) -> None:
    """Withdraw `user`'s right to act for `site`; takes effect on their next request."""
    _require_manager(actor)
    if not can_administer(user, site):
        raise Conflict(f"{user.get_username()} does not administer {site}.", site=site)
    remove_perm(f"sites.{ADMINISTER_SITE}", user, site)
    record(actor=actor, action=SiteAction.ADMIN_REMOVED, target=site, site=site,
           details={"user": user.get_username(), "user_id": user.pk})


def site_viewed(*, actor: AbstractBaseUser, site: Site, study_ids: Iterable[int], via: str = "page:site") -> None:
    """Record that someone read a site's page: its participations and round activity are study data, so
    "who saw what" gets one event per page view, naming the site and listing the studies shown."""
    record(actor=actor, action=SiteAction.SITE_VIEWED, target=site, site=site,
           details={"via": via, "studies": sorted(set(study_ids))})


def _snapshot(site: Site) -> dict[str, str]:
    return {field: getattr(site, field) for field in SITE_FIELDS}


# --- Agent tokens --------------------------------------------------------------------------------------


def _require_site_admin(actor: AbstractBaseUser, site: Site, doing: str) -> None:
    """Only the site's admins manage its tokens; a site the actor cannot even see is a NotFound."""
    if can_administer(actor, site):
        return
    if sites_for(actor, "view").filter(pk=site.pk).exists():
        raise Forbidden(f"Only an admin of {site} may {doing}.", site=site)
    raise NotFound("No such site.")


def _unused_prefix() -> str:
    # 32 bits: a collision is rare but possible, and the prefix must name one row.
    for _ in range(8):
        prefix = tokens.new_prefix()
        if not AgentToken.objects.filter(prefix=prefix).exists():
            return prefix
    raise RuntimeError("Could not find an unused agent token prefix.")


@audited_service(SiteAction.AGENT_TOKEN_CREATE)
def agent_token_create(*, actor: AbstractBaseUser, site: Site, name: str) -> tuple[AgentToken, str]:
    """Issue an agent credential for `site`. Returns the token and its plaintext, which exists only in
    this return value: the database keeps the SHA-256 of the secret, and the audit event the prefix."""
    found = locked(Site.objects.filter(pk=site.pk)).first()
    if found is None:
        raise NotFound("No such site.")
    _require_site_admin(actor, found, "create its agent tokens")
    site = found
    name = name.strip()
    if not name:
        raise ValidationFailed("Give the token a name that says where the agent runs, e.g. 'GPU box in radiology'.",
                               site=site)
    prefix, secret = _unused_prefix(), tokens.new_secret()
    token = AgentToken(site=site, name=name, prefix=prefix, key_hash=tokens.hash_secret(secret), created_by=actor)
    token.full_clean()
    token.save()
    record(actor=actor, action=SiteAction.AGENT_TOKEN_CREATED, target=token, site=site,
           details={"name": token.name, "prefix": token.prefix})
    return token, tokens.assemble(prefix, secret)


@audited_service(SiteAction.AGENT_TOKEN_REVOKE)
def agent_token_revoke(*, actor: AbstractBaseUser, token: AgentToken, reason: str) -> AgentToken:
    """Revoke a token for good; the agent's next request is refused with the reason. Another site's
    token is a NotFound, as if it did not exist."""
    found = locked(AgentToken.objects.select_related("site").filter(pk=token.pk), of=("self",)).first()
    if found is None or not can_administer(actor, found.site):
        raise NotFound("No such agent token.")
    if found.is_revoked:
        raise InvalidTransition(f"The token {found} was already revoked on {found.revoked_at:%Y-%m-%d %H:%M} UTC.",
                                site=found.site, target=found)
    if not reason.strip():
        raise ValidationFailed("Give a reason; the agent is shown it when its token is refused.",
                               site=found.site, target=found)
    found.revoked_at, found.revoked_by, found.revoke_reason = timezone.now(), actor, reason.strip()
    found.full_clean()
    found.save()
    record(actor=actor, action=SiteAction.AGENT_TOKEN_REVOKED, target=found, site=found.site,
           details={"name": found.name, "prefix": found.prefix, "reason": found.revoke_reason})
    return found


def agent_token_authenticate(raw: str) -> AgentToken | None:
    """The live token a presented string belongs to, or None (malformed, unknown or revoked).

    Not audited: it is a read on every agent request. It does note when the token was last used,
    at most once per `LAST_SEEN_RESOLUTION`, so a polling agent does not cost a write per request.
    """
    token = agent_token_identify(raw)
    if token is None or token.is_revoked:
        return None
    now = timezone.now()
    if token.last_seen_at is None or now - token.last_seen_at >= LAST_SEEN_RESOLUTION:
        stale = Q(last_seen_at__isnull=True) | Q(last_seen_at__lte=now - LAST_SEEN_RESOLUTION)
        # Conditional, so concurrent requests of one agent write once between them.
        AgentToken.objects.filter(stale, pk=token.pk).update(last_seen_at=now)
        token.last_seen_at = now
    return token
