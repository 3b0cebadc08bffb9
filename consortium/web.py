"""Turning service refusals into pages: the one place HTML views map a DomainError to an answer.

NotFound becomes a plain 404 (an invisible object looks exactly like a missing one); Forbidden
becomes a 403 page that says why; any other refusal of a POST is flashed as the service's own
sentence on the page the user came from, so they can read it and try again.
"""

import functools
from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme

from consortium.errors import DomainError, Forbidden, NotFound, ValidationFailed

View = Callable[..., HttpResponse]


def safe_next(request: HttpRequest, fallback: str) -> str:
    """Where to go after a POST: the form's `next` field when it stays on this site, else `fallback`."""
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(target, {request.get_host()}, request.is_secure()):
        return target
    return fallback


def _referer_or_home(request: HttpRequest) -> str:
    """The page a form was posted from (a POST-only URL cannot be redirected back to), else home."""
    referer = request.headers.get("referer", "")
    if referer and url_has_allowed_host_and_scheme(referer, {request.get_host()}, request.is_secure()):
        return referer
    return reverse("home")


def forbidden(request: HttpRequest, reason: str) -> HttpResponse:
    return render(request, "403.html", {"reason": reason}, status=403)


def error_response(request: HttpRequest, exc: DomainError, *, back: str) -> HttpResponse:
    """The answer to a refusal; `back` is the page a refused POST returns to."""
    if isinstance(exc, NotFound):
        raise Http404(exc.message)
    if isinstance(exc, Forbidden):
        return forbidden(request, exc.message)
    if request.method == "POST":
        messages.error(request, exc.message)
        return redirect(back)
    return render(request, "error.html", {"reason": exc.message, "status": exc.status}, status=exc.status)


def domain_errors(view: View) -> View:
    """Decorate a view so that a DomainError it lets through becomes the right page (see module doc)."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except DomainError as exc:
            return error_response(request, exc, back=safe_next(request, _referer_or_home(request)))
        except DjangoValidationError as exc:  # a model's own rules refused the input (full_clean in a service)
            refusal = ValidationFailed(" ".join(exc.messages))
            return error_response(request, refusal, back=safe_next(request, _referer_or_home(request)))

    return wrapper


def call_or_form_error(form: forms.Form, service: Callable[..., Any], **kwargs: Any) -> Any:
    """Call a service from a page with a form; a refusal other than 404/403 becomes a form error,
    so the user keeps what they typed. Returns the service's result, or None when refused."""
    try:
        return service(**kwargs)
    except (NotFound, Forbidden):
        raise
    except DomainError as exc:
        form.add_error(None, exc.message)
        return None
    except DjangoValidationError as exc:
        form.add_error(None, " ".join(exc.messages))
        return None


def form_errors_text(form: forms.Form) -> str:
    """A form's errors as one sentence, for forms posted from a page that is redirected back to."""
    parts = []
    for field, errors in form.errors.items():
        label = ""
        if field in form.fields:
            label = form.fields[field].label or field.replace("_", " ").capitalize()
        parts.extend(f"{label}: {error}" if label else str(error) for error in errors)
    return " ".join(parts)


def csv_attachment(text: str, filename: str) -> HttpResponse:
    """A CSV download (pages and the API alike); the text comes from `consortium.audit.exports.write_csv`."""
    response = HttpResponse(text, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
