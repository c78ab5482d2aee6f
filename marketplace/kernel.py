"""Client of the Kernel, the company service that verifies partner manifests.

`get_kernel()` returns the HTTP backend when MARKETPLACE_KERNEL_URL is set (mutual TLS with
MARKETPLACE_KERNEL_CERT and MARKETPLACE_KERNEL_KEY) and the local backend otherwise, which
checks the Ed25519 signature itself against the publisher keys registered on the platform.
"""

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.conf import settings

from marketplace.canonical import canonical_json


class KernelUnavailable(Exception):
    """The Kernel could not be reached or failed to answer; the question is still open."""


@dataclass(frozen=True)
class PublisherKey:
    key_id: str
    public_key: bytes  # raw 32-byte Ed25519 public key


@dataclass(frozen=True)
class ManifestVerdict:
    verified: bool
    reason: str
    key_id: str = ""


def decode_signature(signature: str) -> bytes:
    """Accepts standard or URL-safe base64, padded or not."""
    text = "".join(signature.split())
    text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError("the signature is not base64") from exc


class Kernel(Protocol):
    name: str

    def verify_manifest(
        self,
        *,
        publisher: str,
        publisher_keys: Sequence[PublisherKey],
        manifest: dict[str, Any],
        signature: str,
    ) -> ManifestVerdict: ...


class LocalKernel:
    name = "local"

    def verify_manifest(
        self,
        *,
        publisher: str,
        publisher_keys: Sequence[PublisherKey],
        manifest: dict[str, Any],
        signature: str,
    ) -> ManifestVerdict:
        try:
            raw_signature = decode_signature(signature)
            message = canonical_json(manifest)
        except ValueError as exc:
            return ManifestVerdict(False, f"the manifest cannot be checked: {exc}")
        if len(raw_signature) != 64:
            return ManifestVerdict(
                False, f"an Ed25519 signature is 64 bytes; this one is {len(raw_signature)}"
            )
        if not publisher_keys:
            return ManifestVerdict(
                False, f"partner {publisher!r} has no registered manifest-signing key"
            )
        for key in publisher_keys:
            try:
                Ed25519PublicKey.from_public_bytes(key.public_key).verify(raw_signature, message)
            except InvalidSignature:
                continue
            return ManifestVerdict(True, f"signed by {publisher}'s key {key.key_id!r}", key.key_id)
        return ManifestVerdict(
            False,
            f"the signature matches none of the {len(publisher_keys)} active key(s) registered "
            f"for partner {publisher!r}: it was made with an unregistered or revoked key, or "
            f"the manifest was changed after signing",
        )


class HttpKernel:
    name = "http"

    def __init__(self, *, base_url: str, cert: str, key: str, ca: str, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.cert = (cert, key) if cert else None
        self.verify: str | bool = ca or True
        self.timeout = timeout

    def verify_manifest(
        self,
        *,
        publisher: str,
        publisher_keys: Sequence[PublisherKey],
        manifest: dict[str, Any],
        signature: str,
    ) -> ManifestVerdict:
        url = f"{self.base_url}/v1/manifests/verify"
        payload = {
            "publisher": publisher,
            "manifest": manifest,
            "signature": signature,
            "registered_key_ids": [key.key_id for key in publisher_keys],
        }
        try:
            # A redirect is not part of the Kernel's API. Following one would send the manifest
            # and our client certificate to wherever it points and take that answer as the
            # Kernel's.
            response = requests.post(
                url,
                json=payload,
                cert=self.cert,
                verify=self.verify,
                timeout=self.timeout,
                allow_redirects=False,
            )
        except (requests.RequestException, OSError) as exc:
            # OSError: the client certificate, key or CA file cannot be read.
            raise KernelUnavailable(f"the Kernel at {self.base_url} is unreachable: {exc}") from exc
        if response.status_code >= 500:
            raise KernelUnavailable(
                f"the Kernel at {self.base_url} failed with HTTP {response.status_code}"
            )
        try:
            body = response.json()
        except ValueError:
            raise KernelUnavailable(
                f"the Kernel at {self.base_url} answered HTTP {response.status_code} "
                "with a body that is not JSON"
            ) from None
        if not isinstance(body, dict):
            raise KernelUnavailable(
                f"the Kernel at {self.base_url} answered HTTP {response.status_code} "
                "with JSON that is not an object"
            )
        verified = body.get("verified")
        if response.status_code == 200 and verified is True:
            return ManifestVerdict(
                True, body.get("reason") or "verified by the Kernel", str(body.get("key_id") or "")
            )
        # Only an explicit "verified": false (or a 4xx about the request) is a rejection; an
        # answer that says neither is a fault on the Kernel's side, and must not take SKUs
        # off sale.
        if (response.status_code == 200 and verified is False) or response.status_code in (
            400,
            409,
            422,
        ):
            reason = body.get("reason") or body.get("detail") or "no reason given"
            return ManifestVerdict(False, f"the Kernel rejected the manifest: {reason}")
        raise KernelUnavailable(
            f"the Kernel at {self.base_url} answered HTTP {response.status_code} without a verdict"
        )


def get_kernel() -> Kernel:
    if settings.KERNEL_URL:
        return HttpKernel(
            base_url=settings.KERNEL_URL,
            cert=settings.KERNEL_CERT,
            key=settings.KERNEL_KEY,
            ca=settings.KERNEL_CA,
            timeout=settings.KERNEL_TIMEOUT_SECONDS,
        )
    return LocalKernel()
