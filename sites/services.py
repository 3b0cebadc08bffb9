"""Every write to sites: creating them and appointing or removing their admins."""

from django.contrib.auth.models import AbstractBaseUser, Group
from guardian.shortcuts import assign_perm, remove_perm

from consortium.audit import audited_service, record
from consortium.errors import Conflict, Forbidden
from consortium.roles import Role
from sites.models import Site
from sites.permissions import ADMINISTER_SITE, can_administer, can_manage_sites

SITE_FIELDS = ("name", "code", "city", "country", "timezone")


def _require_manager(actor: AbstractBaseUser) -> None:
    if not can_manage_sites(actor):
        raise Forbidden("Only consortium admins manage sites.")


@audited_service("sites.site.create")
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
    record(actor=actor, action="sites.site.created", target=site, site=site, details={"after": _snapshot(site)})
    return site


@audited_service("sites.site.update")
def site_update(*, actor: AbstractBaseUser, site: Site, **changes: str) -> Site:
    """Change a site's descriptive fields."""
    _require_manager(actor)
    site = Site.objects.select_for_update().get(pk=site.pk)
    before = _snapshot(site)
    for field, value in changes.items():
        if field not in SITE_FIELDS:
            raise ValueError(f"{field} is not an editable site field")
        setattr(site, field, value)
    site.full_clean()
    site.save()
    record(actor=actor, action="sites.site.updated", target=site, site=site,
           details={"before": before, "after": _snapshot(site)})
    return site


@audited_service("sites.admin.assign")
def site_admin_assign(*, actor: AbstractBaseUser, site: Site, user: AbstractBaseUser) -> None:
    """Make `user` an admin of `site`: the Site admin role plus the object permission, together."""
    _require_manager(actor)
    if can_administer(user, site):
        raise Conflict(f"{user.get_username()} already administers {site}.", site=site)
    user.groups.add(Group.objects.get_or_create(name=Role.SITE_ADMIN.value)[0])
    assign_perm(f"sites.{ADMINISTER_SITE}", user, site)
    user.__dict__.pop("_consortium_roles", None)
    record(actor=actor, action="sites.admin.assigned", target=site, site=site,
           details={"user": user.get_username(), "user_id": user.pk})


@audited_service("sites.admin.remove")
def site_admin_remove(*, actor: AbstractBaseUser, site: Site, user: AbstractBaseUser) -> None:
    """Withdraw `user`'s right to act for `site`; takes effect on their next request."""
    _require_manager(actor)
    if not can_administer(user, site):
        raise Conflict(f"{user.get_username()} does not administer {site}.", site=site)
    remove_perm(f"sites.{ADMINISTER_SITE}", user, site)
    record(actor=actor, action="sites.admin.removed", target=site, site=site,
           details={"user": user.get_username(), "user_id": user.pk})


def _snapshot(site: Site) -> dict[str, str]:
    return {field: getattr(site, field) for field in SITE_FIELDS}
