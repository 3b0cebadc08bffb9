"""Reads of sites, scoped to what the user may see."""

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet

from consortium.errors import NotFound
from sites.models import Site
from sites.permissions import sites_for

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
