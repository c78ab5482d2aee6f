"""Previews' domain errors (rendered as problem details by marketplace.api.problems)."""

from typing import Any

from marketplace.exceptions import (
    ApplicationError,
    Conflict,
    InvalidInput,
    NotFound,
    ServiceUnavailable,
)


class PreviewNotFound(NotFound):
    code = "preview-not-found"
    title = "No such preview"


class PreviewNotAvailable(Conflict):
    """The SKU cannot be previewed: `reasons` names each unmet condition."""

    code = "preview-unavailable"
    title = "The SKU cannot be previewed"

    def __init__(self, detail: str, *, reasons: list[str], **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.extra["reasons"] = reasons


class PreviewLimitReached(ApplicationError):
    code = "preview-limit"
    title = "Too many previews"
    status = 429


class PreviewCapacityFull(ServiceUnavailable):
    code = "preview-capacity"
    title = "Every preview sandbox is in use"


class PreviewsPaused(ServiceUnavailable):
    code = "previews-paused"
    title = "Previews are paused"


class PreviewStarting(ServiceUnavailable):
    code = "preview-starting"
    title = "The preview is still starting"

    def default_retry_after(self) -> int:
        return 1


class PreviewGone(ApplicationError):
    """The session has ended: `reason` is its end reason (expired, ended, revoked, failed,
    rotated)."""

    code = "preview-gone"
    title = "The preview has ended"
    status = 410

    def __init__(self, detail: str, *, reason: str, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.extra["reason"] = reason


class SandboxUnavailable(ServiceUnavailable):
    code = "sandbox-unavailable"
    title = "The preview's sandbox did not answer"

    def default_retry_after(self) -> int:
        return 2


class InvalidMaterial(InvalidInput):
    code = "invalid-preview-material"
    title = "The preview material is not valid"


class PreviewRefused(Conflict):
    code = "preview-refused"
    title = "The preview change was refused"
