from django.http import HttpRequest

from consortium.roles import Role, roles_of


def roles(request: HttpRequest) -> dict:
    """Expose the current user's roles so the navigation shows only what they can use."""
    held = roles_of(request.user)
    return {"user_roles": held, "Role": {r.name: r.value for r in Role}}
