"""Client of the Kernel, the company service that verifies partner manifests and keeps a copy
of the audit chain.

`get_kernel()` returns the HTTP backend when MARKETPLACE_KERNEL_URL is set (mutual TLS with
MARKETPLACE_KERNEL_CERT and MARKETPLACE_KERNEL_KEY) and the local backend otherwise, which
checks the Ed25519 signature itself against the publisher keys registered on the platform, and
keeps no copy of the audit chain.

The audit-append API (docs/audit.md, "Kernel fan-out"):

    POST {KERNEL_URL}/v1/audit/events
    {"events": [{"hash": "...", "record": {...}}, ...]}     export lines, in sequence order

    200 {"acknowledged_through": N}   the Kernel holds events 1..N. Idempotent by sequence:
                                      events it already holds are compared, not added again.
    409 {"acknowledged_through": M}   the first event sent is beyond M + 1, where the Kernel's
                                      copy ends: send again from M + 1.
    other 4xx                         a rejection (KernelRejected); sending it unchanged will
                                      not help, so it is recorded for an operator.
    5xx, timeout, unreadable answer   KernelUnavailable.

    GET {KERNEL_URL}/v1/audit/head
    200 {"acknowledged_through": N, "hash": "..."}   the last event the Kernel holds and its
                                      hash (null when it holds none): what audit_verify compares
                                      the database with, the Kernel being a witness of the chain
                                      that the database's owner cannot rewrite.
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


class KernelRejected(Exception):
    """The Kernel answered that the request itself is wrong (a 4xx): sending it again as it is
    will not help."""


@dataclass(frozen=True)
class AuditAck:
    """The Kernel's answer to an audit append: it holds events 1..acknowledged_through.
    `in_step` is False when it refused the batch because the batch starts past the end of its
    copy (409): the sender goes back to acknowledged_through + 1."""

    acknowledged_through: int
    in_step: bool = True


@dataclass(frozen=True)
class AuditHead:
    """The last audit event the Kernel holds: its sequence (0: none) and hash."""

    acknowledged_through: int
    hash: str | None


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

    def audit_append(self, *, lines: Sequence[bytes], last_sequence: int) -> AuditAck: ...

    def audit_head(self) -> AuditHead | None: ...


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

    def audit_append(self, *, lines: Sequence[bytes], last_sequence: int) -> AuditAck:
        """Keeps no copy: the local database is the only one, so everything is acknowledged."""
        return AuditAck(acknowledged_through=last_sequence)

    def audit_head(self) -> AuditHead | None:
        """No copy, so no witness."""
        return None


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

    def audit_append(self, *, lines: Sequence[bytes], last_sequence: int) -> AuditAck:
        """Sends audit events, given as export lines (audit.chain.export_line: canonical JSON
        objects, one per event, in sequence order, ending with event `last_sequence`). The
        lines are sent as they are, so the Kernel hashes the very bytes our hashes cover.

        Raises KernelUnavailable (retry later) or KernelRejected (a 4xx other than 409)."""
        url = f"{self.base_url}/v1/audit/events"
        body = b'{"events":[' + b",".join(line.rstrip(b"\n") for line in lines) + b"]}"
        try:
            # Not following redirects, for the same reason as verify_manifest.
            response = requests.post(
                url,
                data=body,
                headers={"Content-Type": "application/json"},
                cert=self.cert,
                verify=self.verify,
                timeout=self.timeout,
                allow_redirects=False,
            )
        except (requests.RequestException, OSError) as exc:
            raise KernelUnavailable(f"the Kernel at {self.base_url} is unreachable: {exc}") from exc
        status = response.status_code
        if status >= 500:
            raise KernelUnavailable(f"the Kernel at {self.base_url} failed with HTTP {status}")
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if status in (200, 409):
            through = answer.get("acknowledged_through") if isinstance(answer, dict) else None
            if not isinstance(through, int) or isinstance(through, bool) or through < 0:
                raise KernelUnavailable(
                    f"the Kernel at {self.base_url} answered HTTP {status} to an audit append "
                    "without a usable acknowledged_through"
                )
            return AuditAck(acknowledged_through=through, in_step=status == 200)
        if 400 <= status < 500:
            detail = answer.get("detail") if isinstance(answer, dict) else None
            raise KernelRejected(
                f"the Kernel at {self.base_url} rejected audit events up to #{last_sequence} "
                f"with HTTP {status}: {detail or 'no reason given'}"
            )
        raise KernelUnavailable(
            f"the Kernel at {self.base_url} answered HTTP {status} to an audit append"
        )

    def audit_head(self) -> AuditHead | None:
        """Raises KernelUnavailable when the Kernel cannot say."""
        url = f"{self.base_url}/v1/audit/head"
        try:
            response = requests.get(
                url,
                cert=self.cert,
                verify=self.verify,
                timeout=self.timeout,
                allow_redirects=False,
            )
            answer = response.json() if response.status_code == 200 else None
        except (requests.RequestException, OSError, ValueError) as exc:
            raise KernelUnavailable(f"the Kernel at {self.base_url} is unreachable: {exc}") from exc
        through = answer.get("acknowledged_through") if isinstance(answer, dict) else None
        head_hash = answer.get("hash") if isinstance(answer, dict) else None
        if (
            not isinstance(through, int)
            or isinstance(through, bool)
            or through < 0
            or not (head_hash is None or isinstance(head_hash, str))
            or (through > 0 and head_hash is None)
        ):
            raise KernelUnavailable(
                f"the Kernel at {self.base_url} answered HTTP {response.status_code} to the "
                "audit head request without a usable acknowledged_through and hash"
            )
        return AuditHead(acknowledged_through=through, hash=head_hash)


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
