"""Logging in through a page: the login form and the admin's (both audit every refusal), and the answer to
a locked-out login, web or API, with the moment the user may try again.

django-axes counts the failures (settings: LOGIN_FAILURE_LIMIT per LOGIN_LOCKOUT_MINUTES, per username and
per address). When an attempt is refused or brings on the lockout, its middleware replaces the view's answer
with `lockout_response`.
"""

from datetime import UTC
from typing import Any

from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone

from consortium.audit.services import LOCKED_OUT, login_failed
from consortium.throttling import client_ip, lockout_ends, seconds_until


class AuditedLoginMixin:
    """Audits a refused login (wrong credentials, or refused while locked out) before the form shows it."""

    via = "web"

    def clean(self) -> dict[str, Any]:
        try:
            return super().clean()  # type: ignore[misc]
        except ValidationError:
            login_failed(request=self.request, username=self.cleaned_data.get("username") or "",  # type: ignore
                         via=self.via)
            raise


class LoginForm(AuditedLoginMixin, AuthenticationForm):
    pass


class AdminLoginForm(AuditedLoginMixin, AdminAuthenticationForm):
    via = "admin"


class LoginView(auth_views.LoginView):
    form_class = LoginForm


def lockout_response(request: HttpRequest, *args: Any) -> HttpResponse:
    """django-axes' AXES_LOCKOUT_CALLABLE: 429 with Retry-After, as JSON for the API and as the login page
    (saying until when) for people. It ignores what axes passes besides the request, which differs between
    its sync and async middleware; the credentials it read are on the request."""
    credentials = getattr(request, "axes_credentials", None) or {}
    username = credentials.get("username") or ""
    address = getattr(request, "axes_ip_address", None) or client_ip(request)
    now = timezone.now()
    ends = lockout_ends(username, address, now=now) or now
    wait = seconds_until(ends, now=now)
    minutes = -(-wait // 60)
    if request.path_info.startswith("/api/"):
        when = f"{ends.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
        response: HttpResponse = JsonResponse(
            {"error": "locked_out", "detail": f"{LOCKED_OUT} Try again after {when} (in {wait} s).",
             "retry_after": wait}, status=429)
    else:
        form = LoginForm(request, initial={"username": username})
        response = render(request, "registration/login.html",
                          {"form": form, "next": request.POST.get("next", ""),
                           "lockout": {"until": ends, "minutes": minutes}}, status=429)
    response["Retry-After"] = str(wait)
    return response
