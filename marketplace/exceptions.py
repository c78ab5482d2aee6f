"""Domain errors. Each carries a code, a title and an HTTP status; the API renders them as
RFC 9457 problem details (marketplace.api.problems)."""

from typing import Any


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
