"""The answers to errors Django raises before (or instead of) any view, handler400/404/500: JSON under /api/,
pages elsewhere."""

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults

from consortium.request_limits import API_PREFIX


def _json_error(code: str, detail: str, status: int) -> JsonResponse:
    return JsonResponse({"error": code, "detail": detail}, status=status)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """A request Django refuses before any view (e.g. too many query parameters)."""
    if request.path.startswith(API_PREFIX):
        return _json_error("bad_request", "The request is malformed (e.g. too many parameters).", 400)
    return defaults.bad_request(request, exception)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if request.path.startswith(API_PREFIX):
        return _json_error("not_found", f"No API endpoint at {request.path[:200]}.", 404)
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if request.path.startswith(API_PREFIX):
        return _json_error("server_error", "The server failed to answer; the error is logged.", 500)
    return defaults.server_error(request)
