"""Who may read the audit log."""

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

from consortium.roles import Role, roles_of

AUDIT_READERS = {Role.AUDITOR.value, Role.DPO.value, Role.CONSORTIUM_ADMIN.value}


def can_read_audit(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Auditors, DPOs and consortium admins read (and export) the whole audit log."""
    return bool(roles_of(user) & AUDIT_READERS)
