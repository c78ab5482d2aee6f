"""Writes to the catalog. The admin, the API, the tasks and the commands all come through here.

Every write retires the cached catalog reads once it commits (catalog.cache.catalog_changed),
and takes the `actor` who asked for it: each change appends its audit event (audit.services)
in the transaction that makes the change, and a call that changes nothing appends none.
Calls to storage and to the Kernel happen outside database transactions, so a slow upload or
an unreachable Kernel never holds a row lock.
"""

from catalog.services.artifacts import (
    KEPT_UPLOAD_MAX_AGE,
    KeptUploadRefused,
    StoredArtifact,
    artifact_integrity_check,
    artifact_integrity_record,
    artifact_keep,
    artifact_kept,
    artifact_orphans_delete,
    artifact_store,
    sku_artifact_attach,
    sku_artifact_upload,
)
from catalog.services.categories import (
    category_delete,
    category_parent_problem,
    category_save,
)
from catalog.services.moderation import (
    Decision,
    moderation_decide,
    moderation_decide_check,
    moderation_decided_payload,
    sku_moderate,
)
from catalog.services.partners import (
    partner_key_build,
    partner_key_register,
    partner_key_revoke,
    partner_save,
    public_key_base64,
    public_key_parse,
)
from catalog.services.skus import (
    InvalidSku,
    ManifestCheck,
    manifest_check,
    manifest_signature_parse,
    sku_activate,
    sku_check,
    sku_fixed_fields,
    sku_manifest_attach,
    sku_manifest_verify,
    sku_retire,
    sku_save,
    sku_splits_check,
    sku_splits_set,
    sku_suspend,
    splits_problems,
)

__all__ = [
    "KEPT_UPLOAD_MAX_AGE",
    "Decision",
    "InvalidSku",
    "KeptUploadRefused",
    "ManifestCheck",
    "StoredArtifact",
    "artifact_integrity_check",
    "artifact_integrity_record",
    "artifact_keep",
    "artifact_kept",
    "artifact_orphans_delete",
    "artifact_store",
    "category_delete",
    "category_parent_problem",
    "category_save",
    "manifest_check",
    "manifest_signature_parse",
    "moderation_decide",
    "moderation_decide_check",
    "moderation_decided_payload",
    "partner_key_build",
    "partner_key_register",
    "partner_key_revoke",
    "partner_save",
    "public_key_base64",
    "public_key_parse",
    "sku_activate",
    "sku_artifact_attach",
    "sku_artifact_upload",
    "sku_check",
    "sku_fixed_fields",
    "sku_manifest_attach",
    "sku_manifest_verify",
    "sku_moderate",
    "sku_retire",
    "sku_save",
    "sku_splits_check",
    "sku_splits_set",
    "sku_suspend",
    "splits_problems",
]
