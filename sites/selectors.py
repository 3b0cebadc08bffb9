"""Reads of sites, scoped to what the user may see."""

import hmac

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet

from consortium.errors import Forbidden, NotFound
from sites import tokens
from sites.models import AgentToken, Site
from sites.permissions import can_administer, sites_for

User = AbstractBaseUser | AnonymousUser


def site_list(user: User) -> QuerySet[Site]:
    """The sites the user may see, by name."""
    return sites_for(user, "view").order_by("name")


def site_get(user: User, pk: int) -> Site:
    """The site if the user may see it; otherwise NotFound, exactly as if it did not exist."""
    site = sites_for(user, "view").filter(pk=pk).first()
    if site is None:
        raise NotFound("No such site.")
    return site


def site_directory(*, exclude_ids: list[int] | None = None) -> QuerySet[Site]:
    """Every site of the consortium by name, for a PI choosing whom to invite (site names are not secret)."""
    return Site.objects.exclude(pk__in=exclude_ids or []).order_by("name")


def sites_administered(user: User) -> QuerySet[Site]:
    """The sites the user administers, by name (the site admin's "My sites")."""
    return sites_for(user, "administer").order_by("name")


def administered_site_ids(user: User) -> set[int]:
    """Ids of the sites the user administers, in one query (pages mark their rows without a check per row)."""
    return set(sites_for(user, "administer").values_list("pk", flat=True))


def agent_tokens_for(user: User) -> QuerySet[AgentToken]:
    """The agent tokens of the sites the user administers (nobody else sees any, not even their prefix)."""
    return AgentToken.objects.filter(site__in=sites_for(user, "administer")).select_related(
        "site", "created_by", "revoked_by"
    )


def site_agent_tokens(user: User, site: Site) -> list[AgentToken]:
    """The site's agent tokens, newest first, for its admins. A site the user cannot see is a NotFound;
    one they can see but do not administer (a PI's view of every site) is Forbidden."""
    if not can_administer(user, site):
        if sites_for(user, "view").filter(pk=site.pk).exists():
            raise Forbidden(f"Only the admins of {site} see its agent tokens.", site=site)
        raise NotFound("No such site.")
    return list(AgentToken.objects.filter(site=site).select_related("site", "created_by", "revoked_by"))


def agent_token_get(user: User, pk: int) -> AgentToken:
    """The token if the user administers its site; otherwise NotFound, exactly as if it did not exist."""
    token = agent_tokens_for(user).filter(pk=pk).first()
    if token is None:
        raise NotFound("No such agent token.")
    return token


def agent_token_identify(raw: str) -> AgentToken | None:
    """The token a presented `cst_<prefix>_<secret>` string belongs to, revoked or not; None when it is
    malformed or no stored hash matches. The prefix finds the row; the hash is compared in constant time."""
    parsed = tokens.parse(raw)
    if parsed is None:
        return None
    token = AgentToken.objects.select_related("site").filter(prefix=parsed.prefix).first()
    if token is None or not hmac.compare_digest(tokens.hash_secret(parsed.secret), token.key_hash):
        return None
    return token
