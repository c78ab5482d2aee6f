from marketplace.exceptions import ApplicationError, Conflict, InvalidInput, NotFound


class SkuNotFound(NotFound):
    code = "sku-not-found"
    title = "No such SKU"


class TransitionRefused(Conflict):
    """A status change was refused; `reasons` lists every unmet condition, not just the first."""

    code = "sku-transition-refused"
    title = "The SKU cannot change to that status"

    def __init__(self, *, slug: str, target: str, reasons: list[str]) -> None:
        super().__init__(
            f"{slug} cannot become {target}: " + "; ".join(reasons),
            extra={"sku": slug, "target_status": target, "reasons": reasons},
        )
        self.reasons = reasons


class SkuLocked(Conflict):
    code = "sku-locked"
    title = "The SKU cannot be changed in its current status"


class InvalidSplits(InvalidInput):
    code = "invalid-royalty-splits"
    title = "The royalty splits are not valid"


class InvalidManifest(InvalidInput):
    code = "invalid-manifest"
    title = "The manifest is not valid"


class InvalidPartnerKey(InvalidInput):
    code = "invalid-partner-key"
    title = "The public key is not valid"


class InvalidCategory(InvalidInput):
    code = "invalid-category"
    title = "The category is not valid"


class ArtifactTooLarge(InvalidInput):
    code = "artifact-too-large"
    title = "The artifact is too large"


class ArtifactUploadFailed(ApplicationError):
    code = "artifact-upload-failed"
    title = "The artifact could not be stored"
    status = 502


class InvalidSku(InvalidInput):
    """A SKU's fields break a rule of the model; `errors` names each field with its problem."""

    code = "invalid-sku"
    title = "The SKU is not valid"


class KeptUploadRefused(InvalidInput):
    code = "kept-upload-refused"
    title = "The kept upload cannot be used"


class ModerationNotAllowed(ApplicationError):
    """Only a Moderator decides, and never on their own upload."""

    code = "moderation-not-allowed"
    title = "You cannot take this moderation decision"
    status = 403


class ModerationDecisionRefused(Conflict):
    code = "moderation-decision-refused"
    title = "The review cannot take that decision"
