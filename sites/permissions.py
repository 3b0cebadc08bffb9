"""Who may do what to a site. Rights come from guardian object permissions, never from superuser status."""

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet
from guardian.shortcuts import get_objects_for_user, get_user_perms, get_users_with_perms

from consortium.roles import Role, has_role, is_person, sees_everything
from sites.models import Site

ADMINISTER_SITE = "administer_site"
SIGN_AGREEMENTS = "sign_agreements"

User = AbstractBaseUser | AnonymousUser


def can_administer(user: User, site: Site) -> bool:
    """Site admins act only for the sites they were made admin of."""
    if not is_person(user):
        return False
    return ADMINISTER_SITE in get_user_perms(user, site)


def can_sign_for(user: User, site: Site) -> bool:
    """The site recorded that this person may sign data use agreements on its behalf."""
    if not is_person(user):
        return False
    return SIGN_AGREEMENTS in get_user_perms(user, site)


def signatories(site: Site) -> list[AbstractBaseUser]:
    """Who holds the site's signing authority, by username."""
    holders = get_users_with_perms(site, only_with_perms_in=[SIGN_AGREEMENTS], with_superusers=False)
    return sorted(holders, key=lambda user: user.get_username())


def can_manage_sites(user: User) -> bool:
    """Consortium admins create sites and appoint their admins."""
    return is_person(user) and (user.is_superuser or has_role(user, Role.CONSORTIUM_ADMIN))


def sites_for(user: User, action: str = "administer") -> QuerySet[Site]:
    """Sites the user may act for ("administer") or see ("view": also every site, for PIs and overseers)."""
    if not is_person(user):
        return Site.objects.none()
    # PIs see every site too: they pick the sites they invite to their studies.
    if action == "view" and (sees_everything(user) or has_role(user, Role.PI) or user.is_superuser):
        return Site.objects.all()
    if action not in {"administer", "view"}:
        raise ValueError(f"unknown site action {action!r}")
    return get_objects_for_user(user, f"sites.{ADMINISTER_SITE}", klass=Site, with_superuser=False)
