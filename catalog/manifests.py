"""Manifests: the partner-signed statement of what a SKU's artifact is.

A manifest is a JSON object; the partner signs its canonical form (marketplace.canonical) with
an Ed25519 key registered on the platform. Version 1:

    {"schema": "marketplace.manifest/v1", "publisher": "<partner slug>", "sku": "<sku slug>",
     "version": "<sku version>",
     "artifact": {"filename": "...", "size": <bytes>, "sha256": "<64 hex digits>"}}

Only `artifact.sha256` is required; every other field present must agree with the SKU.
"""

import json
import re
from typing import TYPE_CHECKING, Any

from catalog.exceptions import InvalidManifest
from marketplace.canonical import canonical_json

if TYPE_CHECKING:
    from catalog.models import Artifact, Sku

MANIFEST_SCHEMA = "marketplace.manifest/v1"
MANIFEST_MAX_BYTES = 64 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def manifest_parse(value: str | dict[str, Any]) -> dict[str, Any]:
    """Parses and checks the form of a manifest (not its signature or its agreement)."""
    if isinstance(value, str):
        if len(value.encode()) > MANIFEST_MAX_BYTES:
            raise InvalidManifest(f"The manifest is larger than {MANIFEST_MAX_BYTES} bytes.")
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InvalidManifest(f"The manifest is not valid JSON: {exc}.") from None
    if not isinstance(value, dict):
        raise InvalidManifest("The manifest must be a JSON object.")
    try:
        canonical_json(value)
    except ValueError as exc:
        raise InvalidManifest(f"The manifest cannot be signed canonically: {exc}.") from None
    artifact = value.get("artifact")
    if not isinstance(artifact, dict) or not isinstance(artifact.get("sha256"), str):
        raise InvalidManifest('The manifest must name its artifact: {"artifact": {"sha256": ...}}.')
    if not _SHA256.match(artifact["sha256"]):
        raise InvalidManifest("artifact.sha256 must be 64 lowercase hexadecimal digits.")
    return value


def manifest_disagreements(sku: "Sku", manifest: dict[str, Any]) -> list[str]:
    """What the manifest says that does not match the SKU and its current artifact."""
    problems: list[str] = []
    artifact = sku.artifact
    named = manifest.get("artifact", {})
    if artifact is not None and named.get("sha256") != artifact.sha256:
        problems.append(
            f"the manifest names artifact SHA-256 {named.get('sha256')}, "
            f"but the uploaded artifact's is {artifact.sha256}"
        )
    if artifact is not None and "size" in named and named["size"] != artifact.size:
        problems.append(
            f"the manifest names an artifact of {named['size']} bytes, "
            f"but the uploaded artifact has {artifact.size}"
        )
    for field, expected in (
        ("sku", sku.slug),
        ("version", sku.version),
        ("publisher", sku.partner.slug),
    ):
        if field in manifest and manifest[field] != expected:
            problems.append(f"the manifest's {field} is {manifest[field]!r}, not {expected!r}")
    return problems


def manifest_for(sku: "Sku", artifact: "Artifact") -> dict[str, Any]:
    """The manifest a partner signs for this SKU and artifact."""
    return {
        "schema": MANIFEST_SCHEMA,
        "publisher": sku.partner.slug,
        "sku": sku.slug,
        "version": sku.version,
        "artifact": {
            "filename": artifact.filename,
            "size": artifact.size,
            "sha256": artifact.sha256,
        },
    }


def manifest_signing_input(manifest: dict[str, Any]) -> bytes:
    return canonical_json(manifest)
