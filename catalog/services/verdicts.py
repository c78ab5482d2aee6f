"""What a manifest whose signature verified says about the SKU's artifact, shared by the services
that change either: a good signature over a manifest that names other bytes is a mismatch, not a
verified manifest."""

from audit.services import audit_append
from catalog.models import ManifestStatus, Sku
from marketplace.actors import Actor

MANIFEST_VERDICT_FIELDS = ["manifest_status", "manifest_detail"]


def signed_manifest_status(sku: Sku) -> ManifestStatus:
    """The status of the SKU's manifest once its signature has verified."""
    if sku.manifest_names_another_artifact():
        return ManifestStatus.MISMATCH
    return ManifestStatus.VERIFIED


def _artifact_sha256(sku: Sku) -> str | None:
    return sku.artifact.sha256 if sku.artifact is not None else None


def signed_manifest_detail(sku: Sku, signature_detail: str) -> str:
    """`signature_detail` (who signed), and for a mismatch which bytes the manifest names."""
    if signed_manifest_status(sku) == ManifestStatus.VERIFIED:
        return signature_detail
    return (
        f"{signature_detail}; but the manifest names artifact SHA-256 "
        f"{sku.manifest_artifact_sha256()}, not the uploaded artifact's {_artifact_sha256(sku)}"
    )


def signed_manifest_record(sku: Sku, *, status: ManifestStatus, actor: Actor) -> None:
    """Records `sku.manifest_verified`, or `sku.manifest_mismatch` with both SHA-256s."""
    if status == ManifestStatus.VERIFIED:
        audit_append(
            actor=actor,
            action="sku.manifest_verified",
            subject=sku,
            data={"key_id": sku.manifest_key_id},
        )
        return
    audit_append(
        actor=actor,
        action="sku.manifest_mismatch",
        subject=sku,
        data={
            "key_id": sku.manifest_key_id,
            "manifest_artifact_sha256": sku.manifest_artifact_sha256(),
            "artifact_sha256": _artifact_sha256(sku),
        },
    )


def signed_manifest_recheck(sku: Sku, *, actor: Actor) -> list[str]:
    """After the SKU's artifact changed: a manifest whose signature verified becomes a mismatch
    if it names other bytes than the new artifact, and verified again if it names them.

    Precondition: the caller holds the SKU's lock and saves the returned fields. Records the
    new verdict (see signed_manifest_record) only when the status changes.
    """
    if sku.manifest_status not in (ManifestStatus.VERIFIED, ManifestStatus.MISMATCH):
        return []
    status = signed_manifest_status(sku)
    if status == sku.manifest_status:
        return []
    sku.manifest_status = status
    sku.manifest_detail = signed_manifest_detail(
        sku, f"signed with the partner's key {sku.manifest_key_id!r}"
    )
    signed_manifest_record(sku, status=status, actor=actor)
    return MANIFEST_VERDICT_FIELDS
