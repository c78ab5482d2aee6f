"""Domain errors. Each carries a code, a title and an HTTP status; the API renders them as
RFC 9457 problem details (marketplace.api.problems)."""

from typing import Any

from django.conf import settings


class ApplicationError(Exception):
    code = "application-error"
    title = "The request could not be completed"
    status = 400

    def __init__(
        self,
        detail: str,
        *,
        errors: dict[str, list[str]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.extra = extra or {}

    @property
    def retry_after(self) -> int | None:
        """Seconds to wait before trying again: what Retry-After and the body's `retry_after`
        both say (marketplace.api.problems reads it for each). A 503 that names none gets the
        outage default, so no 503 goes without one."""
        if "retry_after" in self.extra:
            return self.extra["retry_after"]
        if self.status == 503:
            return settings.OUTAGE_RETRY_AFTER_SECONDS
        return None


class ServiceUnavailable(ApplicationError):
    """A 503: something the request needs cannot be reached right now. `retry_after` is the
    one given, else the class's default_retry_after (MARKETPLACE_OUTAGE_RETRY_AFTER_SECONDS),
    fixed when raised."""

    code = "service-unavailable"
    title = "A service the platform needs is unavailable"
    status = 503

    def __init__(self, detail: str, *, retry_after: int | None = None, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        if retry_after is not None:
            self.extra["retry_after"] = retry_after
        self.extra.setdefault("retry_after", self.default_retry_after())

    def default_retry_after(self) -> int:
        return settings.OUTAGE_RETRY_AFTER_SECONDS


class InvalidInput(ApplicationError):
    code = "invalid-input"
    title = "The input is not valid"
    status = 400


class NotFound(ApplicationError):
    code = "not-found"
    title = "Not found"
    status = 404


class Conflict(ApplicationError):
    code = "conflict"
    title = "The request conflicts with the current state"
    status = 409
