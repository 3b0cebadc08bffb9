from django.http import HttpRequest

from consortium.audit.keys import fingerprint
from consortium.roles import Role, roles_of


def roles(request: HttpRequest) -> dict:
    """Expose the current user's roles so the navigation shows only what they can use."""
    held = roles_of(request.user)
    return {"user_roles": held, "Role": {r.name: r.value for r in Role}}


def audit_key(request: HttpRequest) -> dict:
    """The audit signing key's fingerprint for the footer, so anyone can compare it with the key they verify
    exports against ("" when none is configured: the footer then says nothing)."""
    return {"audit_key_fingerprint": fingerprint()}
