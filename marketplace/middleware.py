"""Outages met outside the API views, answered as outages.

DRF's exception handler (marketplace.api.problems) answers an outage raised in an API view.
`OutageMiddleware.process_exception` answers one raised in any other view (the webhook, the
download links, the admin); one raised in a middleware (a session saved to the database) reaches
Django's 500 handler, which asks `outage_answer` first (marketplace.views.server_error). Either
way the answer is a 503 with `Retry-After` naming the dependency, a problem body for the API
and a plain page for the admin, and the exception is logged once, as one line.
"""

import logging
from collections.abc import Callable
from html import escape

from django.http import HttpRequest, HttpResponse, JsonResponse

from marketplace.api.problems import (
    OUTAGE_TITLES,
    PROBLEM_CONTENT_TYPE,
    error_headers,
    error_response,
    outage_body,
    outage_log,
    outage_of,
    problem_body,
)
from marketplace.exceptions import ApplicationError

ADMIN_PREFIX = "/admin/"


def admin_page(status: int, title: str, detail: str, headers: dict[str, str]) -> HttpResponse:
    """A plain HTML page for the admin, whose forms are HTML: no template, no context
    processors, so it can be built while the database or the cache is down."""
    title, detail = escape(title), escape(detail)
    page = f"<!doctype html><title>{title}</title><h1>{title}</h1><p>{detail}</p>"
    return HttpResponse(page, status=status, headers=headers)


def error_answer(request: HttpRequest, exc: ApplicationError) -> HttpResponse:
    """A domain error answered outside the API's views: a plain page under /admin/ (a refused
    staff sign-in), problem details elsewhere; the status and Retry-After are the same."""
    if request.path.startswith(ADMIN_PREFIX):
        return admin_page(exc.status, exc.title, exc.detail, error_headers(exc))
    return error_response(request, exc)


def outage_answer(request: HttpRequest, exc: BaseException | None) -> HttpResponse | None:
    """The 503 for `exc` if it is an outage of the database, cache or broker, else None.

    Builds its answer without the database, the cache or a template's context processors,
    which may be what is down."""
    dependency = outage_of(exc)
    if dependency is None or exc is None:
        return None
    outage_log(dependency, method=request.method or "", path=request.path, exc=exc)
    body, headers = outage_body(dependency, instance=request.path)
    if request.path.startswith(ADMIN_PREFIX):
        return admin_page(503, OUTAGE_TITLES[dependency], body["detail"], headers)
    return JsonResponse(body, status=503, content_type=PROBLEM_CONTENT_TYPE, headers=headers)


class OutageMiddleware:
    """Answers an outage raised in a view that is not one of DRF's (those answer their own)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        return outage_answer(request, exception)


class ContentLengthCheck:
    """A Content-Length that is not a number of bytes is a 400 before anything reads it (the
    metrics middleware would fail on it with a 500, and a body's limit must be trusted). A
    server in front (gunicorn) refuses most such requests already; this covers the rest."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        length = request.META.get("CONTENT_LENGTH") or "0"
        if not (length.isascii() and length.isdigit()):
            return JsonResponse(
                problem_body(
                    status=400,
                    code="bad-content-length",
                    detail="Content-Length is not a number of bytes.",
                    instance=request.path,
                ),
                status=400,
                content_type=PROBLEM_CONTENT_TYPE,
            )
        return self.get_response(request)


class OutageWithoutTraceback(logging.Filter):
    """Keeps Django's record of an outage answered by the 500 handler to its one line.

    `outage_answer` has logged the exception already; the traceback Django attaches to its
    "Service Unavailable" record would repeat it for every request of the outage."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and outage_of(record.exc_info[1]) is not None:
            record.exc_info = None
            record.exc_text = None
        return True
