"""Writes that span the consortium: reads of the audit log, role changes, API tokens and refused lookups."""

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from django.contrib.auth import authenticate
from django.contrib.auth.models import AbstractBaseUser, Group
from django.db import transaction
from django.http import HttpRequest
from rest_framework.authtoken.models import Token

from consortium.audit.log import ActorRef, record, record_denial
from consortium.audit.models import AuditActorKind, AuditEvent
from consortium.audit_actions import ConsortiumAction
from consortium.errors import DomainError, ValidationFailed
from consortium.throttling import client_ip, lockout_ends

BAD_CREDENTIALS = "Unable to log in with that username and password."
LOCKED_OUT = "Too many failed logins for this username or from this address."
T = TypeVar("T")


def audit_log_read(*, actor: AbstractBaseUser, via: str, filters: dict[str, Any], count: int) -> None:
    """Record that someone read or exported the audit log ("who saw what" includes the log itself)."""
    record(actor=actor, action=f"consortium.audit.{via}", study=filters.get("study_id"),
           details={"filters": filters, "events": count})


def study_data_read(
    *, actor: Any, action: str, details: dict[str, Any], study: Any = None, site: Any = None, target: Any = None
) -> AuditEvent:
    """Record that someone read study data through the API ("who saw what"). `ConsortiumApi` calls this
    once per successful read, inside the transaction that read it."""
    return record(actor=actor, action=action, target=target, study=study, site=site, details=details)


def overview_viewed(*, actor: AbstractBaseUser, study_ids: Iterable[int], via: str = "page:overview") -> AuditEvent:
    """Record that someone read the consortium overview: one event per page view, listing every study it
    showed, so "who saw what" holds for pages that span studies (no single `study_id` fits them)."""
    return record(actor=actor, action=ConsortiumAction.OVERVIEW_VIEWED,
                  details={"via": via, "studies": sorted(study_ids)})


def user_roles_changed(
    *, actor: Any, user: AbstractBaseUser, before: Iterable[str], after: Iterable[str], via: str
) -> AuditEvent | None:
    """Record a change of a user's groups (global roles), if there was one.

    Every path that changes a user's groups reports it here, inside the transaction that made it:
    `user_roles_add` (appointing a site admin, `seed_demo`), and the Django admin's user and group
    pages, whose forms change the groups themselves.
    """
    old, new = sorted(set(before)), sorted(set(after))
    if old == new:
        return None
    return record(actor=actor, action=ConsortiumAction.USER_ROLES_CHANGED, target=user,
                  details={"user": user.get_username(), "before": old, "after": new,
                           "added": sorted(set(new) - set(old)), "removed": sorted(set(old) - set(new)),
                           "via": via})


def group_names(user: AbstractBaseUser) -> list[str]:
    """The names of the groups `user` is in, read from the database (not a cached prefetch)."""
    return list(Group.objects.filter(user=user).values_list("name", flat=True))


def user_roles_add(*, actor: Any, user: AbstractBaseUser, roles: Iterable[str], via: str) -> AuditEvent | None:
    """Put `user` in the groups of `roles` (created if missing) and record the change, in one transaction.
    A role the user already holds changes nothing and records nothing."""
    with transaction.atomic():
        before = group_names(user)
        user.groups.add(*(Group.objects.get_or_create(name=role)[0] for role in roles))
        user.__dict__.pop("_consortium_roles", None)  # roles are cached per user object
        return user_roles_changed(actor=actor, user=user, before=before, after=group_names(user), via=via)


def access_denied(
    *, actor: Any, action: str, reason: str, code: str, study: Any = None, site: Any = None, target: Any = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Record a refused read or lookup (an invisible object, a forbidden read) that no write service saw.

    Services audit their own refusals; adapters call this when a selector refuses before any service
    runs, so "the attempt is audited" holds for crafted requests too.
    """
    return record_denial(actor=actor, action=action, reason=reason, study=study, site=site, target=target,
                         details={"code": code, **(details or {})})


def login_failed(*, request: HttpRequest, username: str, via: str) -> AuditEvent:
    """Record a refused login (`authenticate` just returned no user for `request`, which django-axes marked).

    `consortium.login.failed`: a wrong username or password, counted towards the lockout (`locked_out` says
    whether this one brought it on). `consortium.login.locked_out`: refused without checking the password,
    because the username or the address is locked out. Both say from where, and until when it is locked."""
    address = getattr(request, "axes_ip_address", None) or client_ip(request)
    locked = bool(getattr(request, "axes_locked_out", False))
    failures = getattr(request, "axes_failures_since_start", None)  # None: not counted (refused while locked)
    ends = lockout_ends(username, address) if locked else None
    refused_unchecked = locked and failures is None
    details = {"via": via, "address": address, "failures": failures, "locked_out": locked,
               "locked_until": ends.isoformat() if ends else None}
    return record_denial(actor=ActorRef(kind=AuditActorKind.USER, label=username or "anonymous"),
                         action=(ConsortiumAction.LOGIN_LOCKED_OUT if refused_unchecked
                                 else ConsortiumAction.LOGIN_FAILED),
                         reason=LOCKED_OUT if locked else BAD_CREDENTIALS, details=details)


def api_token_obtain(*, request: HttpRequest, username: str, password: str) -> Token:
    """Exchange a username and password for the user's API token (created once, then reused).

    `request` is the Django request: django-axes reads the client's address from it and marks it when the
    login is locked out (its middleware then answers 429; see `consortium.logins.lockout_response`)."""
    user = authenticate(request, username=username, password=password)
    if user is None or not user.is_active:
        login_failed(request=request, username=username, via="api:token")
        raise ValidationFailed(BAD_CREDENTIALS)
    with transaction.atomic():
        token, created = Token.objects.get_or_create(user=user)
        record(actor=user, action=ConsortiumAction.API_TOKEN_ISSUED if created else ConsortiumAction.API_TOKEN_REISSUED,
               target=user, details={"user": user.get_username()})
    return token


def select_or_deny(actor: Any, attempt: str, select: Callable[[], T], *, study: Any = None, site: Any = None) -> T:
    """Run a selector for a page or an API call; if it refuses (an invisible object, a forbidden read),
    audit the attempt as `attempt` and let the refusal through, so the caller answers 404 or 403."""
    try:
        return select()
    except DomainError as exc:
        access_denied(actor=actor, action=attempt, reason=exc.message, code=exc.code,
                      study=exc.study if exc.study is not None else study,
                      site=exc.site if exc.site is not None else site, target=exc.target)
        raise
