"""Global roles, kept as Django groups. Per-object rights live in guardian (see each app's permissions)."""

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import models


class Role(models.TextChoices):
    PI = "PI", "Principal investigator"
    SITE_ADMIN = "Site admin", "Site admin"
    DPO = "DPO", "Data-protection officer"
    AUDITOR = "Auditor", "Auditor"
    CONSORTIUM_ADMIN = "Consortium admin", "Consortium admin"


def is_person(user: object) -> bool:
    """An active, logged-in user. Site agents authenticate too, but are not people: no policy grants them
    anything (they act only through the gate, for their own site)."""
    return isinstance(user, AbstractBaseUser) and user.is_authenticated and user.is_active


def roles_of(user: AbstractBaseUser | AnonymousUser) -> frozenset[str]:
    """The role names a user holds, cached on the user object for the request."""
    if not user.is_authenticated or not user.is_active:
        return frozenset()
    cached = getattr(user, "_consortium_roles", None)
    if cached is None:
        cached = frozenset(user.groups.filter(name__in=Role.values).values_list("name", flat=True))
        user._consortium_roles = cached
    return cached


def has_role(user: AbstractBaseUser | AnonymousUser, role: Role) -> bool:
    return role.value in roles_of(user)


def sees_everything(user: AbstractBaseUser | AnonymousUser) -> bool:
    """DPOs, auditors and consortium admins oversee every study (read access)."""
    return bool(roles_of(user) & {Role.DPO.value, Role.AUDITOR.value, Role.CONSORTIUM_ADMIN.value})


def ensure_role_groups(*, using: str = "default", **kwargs: object) -> None:
    """Create the group of every role (after `migrate`), so the consortium admin picks roles in the admin."""
    from django.contrib.auth.models import Group

    for role in Role:
        Group.objects.using(using).get_or_create(name=role.value)
