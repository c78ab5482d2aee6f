"""RFC 9457 problem details for every error the platform answers.

One DRF exception handler covers domain errors, Django's ValidationError, Http404 and
PermissionDenied, DRF's own exceptions and outages of the platform's own dependencies. Plain
Django views (the webhook, download links, the local checkout pages, the error handlers)
answer with `problem_response` or `error_response`, which build the same body and headers;
marketplace.middleware answers their outages.

An outage of the database, the cache or the broker, wherever in a request it is met, is a 503
whose `code` names the dependency (`database-unavailable`, `cache-unavailable`,
`broker-unavailable`), with `Retry-After`. The exception itself, which names hosts, ports,
folders or buckets, goes to the log as one line and never into the answer.
"""

import logging
from http import HTTPStatus
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import InterfaceError as DatabaseInterfaceError
from django.db import OperationalError as DatabaseOperationalError
from django.http import Http404, HttpRequest, JsonResponse
from django_redis.exceptions import ConnectionInterrupted as CacheConnectionInterrupted
from kombu.exceptions import OperationalError as BrokerUnavailable
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response
from rest_framework.settings import api_settings

from marketplace.exceptions import ApplicationError

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:marketplace:problem:"

outage_logger = logging.getLogger("marketplace.outages")


def problem_body(
    *,
    status: int,
    detail: str,
    code: str | None = None,
    title: str | None = None,
    instance: str | None = None,
    errors: dict[str, list[str]] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        # Plain HTTP errors use "about:blank" as RFC 9457 says; ours name their own type.
        "type": f"{PROBLEM_TYPE_PREFIX}{code}" if code else "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if code:
        body["code"] = code
    if instance:
        body["instance"] = instance
    if errors:
        body["errors"] = errors
    if extra:
        body.update(extra)
    return body


def error_headers(exc: ApplicationError) -> dict[str, str]:
    """A domain error that names when to come back (exc.retry_after, which every 503 does)
    says it in Retry-After, and _error_body the same number in `retry_after`."""
    return {} if exc.retry_after is None else {"Retry-After": str(exc.retry_after)}


# --- Outages of the platform's own dependencies ------------------------------------------------

OUTAGE_TITLES = {
    "database": "The database is unavailable",
    "cache": "The cache is unavailable",
    "broker": "The task broker is unavailable",
}


def outage_of(exc: BaseException | None) -> str | None:
    """The dependency whose outage `exc` is: "database", "cache", "broker", or None.

    Database: Django's OperationalError (refused or lost connection, a terminated backend, a
    statement or lock timeout) and InterfaceError (a connection already closed). Broker: what
    Celery raises when it cannot publish. Cache: a Redis connection error that reached the
    request; the cache's own reads and writes swallow theirs (IGNORE_EXCEPTIONS, they degrade
    to the database), so only code that needs Redis to answer (counters, locks, the client
    used directly) meets one.
    """
    if isinstance(exc, BrokerUnavailable):  # checked first: it may wrap a Redis error
        return "broker"
    if isinstance(exc, DatabaseOperationalError | DatabaseInterfaceError):
        return "database"
    if isinstance(exc, CacheConnectionInterrupted | RedisConnectionError | RedisTimeoutError):
        return "cache"
    return None


def outage_log(dependency: str, *, method: str, path: str, exc: BaseException) -> None:
    """One line with what the answer leaves out: the exception, its newlines folded."""
    message = " ".join(str(exc).split())
    outage_logger.error(
        "%s unavailable: %s %s: %s.%s: %s",
        dependency,
        method,
        path,
        type(exc).__module__,
        type(exc).__qualname__,
        message,
    )


def outage_body(dependency: str, *, instance: str | None) -> tuple[dict[str, Any], dict[str, str]]:
    """The problem body and headers of an outage answer."""
    seconds = settings.OUTAGE_RETRY_AFTER_SECONDS
    body = problem_body(
        status=503,
        code=f"{dependency}-unavailable",
        title=OUTAGE_TITLES[dependency],
        detail=f"The platform cannot reach its {dependency} right now; try again in "
        f"{seconds} seconds.",
        instance=instance,
        extra={"retry_after": seconds},
    )
    return body, {"Retry-After": str(seconds)}


def _error_body(exc: ApplicationError, instance: str | None) -> dict[str, Any]:
    extra = exc.extra if exc.retry_after is None else {**exc.extra, "retry_after": exc.retry_after}
    return problem_body(
        status=exc.status,
        code=exc.code,
        title=exc.title,
        detail=exc.detail,
        instance=instance,
        errors=exc.errors,
        extra=extra,
    )


def problem_response(
    request: HttpRequest,
    *,
    status: int,
    detail: str,
    code: str | None = None,
    title: str | None = None,
    headers: dict[str, str] | None = None,
) -> JsonResponse:
    """A problem-details answer from a plain Django view."""
    body = problem_body(status=status, code=code, title=title, detail=detail, instance=request.path)
    return JsonResponse(body, status=status, content_type=PROBLEM_CONTENT_TYPE, headers=headers)


def error_response(request: HttpRequest, exc: ApplicationError) -> JsonResponse:
    """A domain error answered from a plain Django view, exactly as the API answers it."""
    return JsonResponse(
        _error_body(exc, request.path),
        status=exc.status,
        content_type=PROBLEM_CONTENT_TYPE,
        headers=error_headers(exc),
    )


def flatten_errors(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """Turns DRF's nested error detail into {"field.sub.0": ["message", ...]}."""
    flat: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            flat.update(flatten_errors(value, f"{prefix}.{key}" if prefix else str(key)))
    elif (
        isinstance(detail, list)
        and detail
        and all(isinstance(item, str | drf_exceptions.ErrorDetail) for item in detail)
    ):
        flat[prefix or api_settings.NON_FIELD_ERRORS_KEY] = [str(item) for item in detail]
    elif isinstance(detail, list):
        for index, item in enumerate(detail):
            if item:
                flat.update(flatten_errors(item, f"{prefix}.{index}" if prefix else str(index)))
    else:
        flat[prefix or api_settings.NON_FIELD_ERRORS_KEY] = [str(detail)]
    return flat


def summarize(errors: dict[str, list[str]]) -> str:
    parts = [f"{field}: {' '.join(messages).rstrip('.')}" for field, messages in errors.items()]
    return "Invalid input: " + "; ".join(parts) + "."


def _django_validation_errors(exc: DjangoValidationError) -> dict[str, list[str]]:
    if hasattr(exc, "error_dict"):
        return {
            (api_settings.NON_FIELD_ERRORS_KEY if field == "__all__" else field): messages
            for field, messages in exc.message_dict.items()
        }
    return {api_settings.NON_FIELD_ERRORS_KEY: list(exc.messages)}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    request = context.get("request")
    instance = request.path if request is not None else None
    headers: dict[str, str] = {}

    dependency = outage_of(exc)
    if dependency is not None:
        outage_log(
            dependency,
            method=request.method if request is not None else "",
            path=instance or "",
            exc=exc,
        )
        body, headers = outage_body(dependency, instance=instance)
    elif isinstance(exc, ApplicationError):
        headers.update(error_headers(exc))
        body = _error_body(exc, instance)
    elif isinstance(exc, DjangoValidationError | drf_exceptions.ValidationError):
        errors = (
            _django_validation_errors(exc)
            if isinstance(exc, DjangoValidationError)
            else flatten_errors(exc.detail)
        )
        body = problem_body(
            status=400,
            code="invalid-input",
            title="The input is not valid",
            detail=summarize(errors),
            instance=instance,
            errors=errors,
        )
    else:
        if isinstance(exc, Http404):
            exc = drf_exceptions.NotFound()
        elif isinstance(exc, DjangoPermissionDenied):
            exc = drf_exceptions.PermissionDenied()
        if not isinstance(exc, drf_exceptions.APIException):
            return None  # an unexpected error: Django's 500 handler answers it
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header
        if getattr(exc, "wait", None):
            headers["Retry-After"] = str(int(exc.wait))
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        body = problem_body(
            status=exc.status_code,
            code=str(exc.default_code).replace("_", "-"),
            title=HTTPStatus(exc.status_code).phrase,
            detail=detail,
            instance=instance,
        )

    return Response(body, status=body["status"], headers=headers, content_type=PROBLEM_CONTENT_TYPE)
