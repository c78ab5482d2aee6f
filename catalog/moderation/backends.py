"""Moderation backends: `local` rules (catalog.moderation.rules) or an outside policy service
over `http` (MARKETPLACE_MODERATION_BACKEND). Each turns one item of a SKU (its artifact, its
manifest or its listing text) into a Verdict.

Backends read storage and call out; callers run them outside any database transaction.

The HTTP policy service (docs/moderation.md):

    POST {MARKETPLACE_MODERATION_URL}/v1/reviews          JSON: text items (listing, manifest)
        {"subject", "sku", "partner", "category", "version", "texts": {name: text}}
    POST {MARKETPLACE_MODERATION_URL}/v1/artifacts?sku=&partner=&category=&sha256=&size=
        the artifact's bytes, streamed (application/octet-stream)
    -> 200 {"outcome": "pass"|"flag"|"block",
            "reasons": [{"code": "...", "message": "...", "outcome": "flag"|"block"}]}

Anything else (a network error, a timeout, a non-2xx status, a body that is not such a verdict)
raises ModerationUnavailable: nothing is recorded and the check is tried again.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

import requests
from django.conf import settings
from django.core.files.storage import default_storage

from catalog.moderation import rules
from catalog.moderation.rules import BLOCK, FLAG, PASS, CategoryPolicy, Reason

ARTIFACT = "artifact"
MANIFEST = "manifest"
LISTING = "listing"


@dataclass(frozen=True)
class ModerationItem:
    """What is moderated: one subject of one SKU as it stands. For an artifact,
    `storage_key`, `size` and `sha256`; for text, `texts` (name -> text)."""

    subject: str
    sku: str
    partner: str
    category_path: str
    version: str
    texts: Mapping[str, str] | None = None
    storage_key: str = ""
    size: int = 0
    sha256: str = ""


@dataclass(frozen=True)
class Verdict:
    outcome: str
    reasons: tuple[Reason, ...]
    backend: str


class ModerationUnavailable(Exception):
    """The backend could not give a verdict; the item keeps none and is checked again."""


class ModerationBackend(Protocol):
    name: str

    def moderate(self, item: ModerationItem) -> Verdict: ...


# --- local -------------------------------------------------------------------------------------


def category_policies() -> dict[str, CategoryPolicy]:
    """The default policies, with MARKETPLACE_MODERATION_CATEGORY_TYPES's entries over them."""
    policies = dict(rules.DEFAULT_CATEGORY_POLICIES)
    for slug, entry in (settings.MODERATION_CATEGORY_TYPES or {}).items():
        default = policies.get(slug, policies["*"])
        policies[slug] = CategoryPolicy(
            allowed=tuple(entry.get("types", default.allowed)),
            max_bytes=int(entry.get("max_bytes", default.max_bytes)),
        )
    return policies


def archive_limits() -> rules.ArchiveLimits:
    return rules.ArchiveLimits(
        max_entries=settings.MODERATION_ARCHIVE_MAX_ENTRIES,
        max_ratio=settings.MODERATION_ARCHIVE_MAX_RATIO,
        max_unpacked_bytes=settings.MODERATION_ARCHIVE_MAX_UNPACKED_BYTES,
    )


class LocalBackend:
    name = "local"

    def moderate(self, item: ModerationItem) -> Verdict:
        if item.subject == ARTIFACT:
            reasons = self._artifact_reasons(item)
        else:
            reasons = rules.text_reasons(item.texts or {})
        return Verdict(rules.outcome_of(reasons), tuple(reasons), self.name)

    def _artifact_reasons(self, item: ModerationItem) -> list[Reason]:
        slug, policy = rules.policy_for(item.category_path, category_policies())
        reasons: list[Reason] = []
        if item.size > policy.max_bytes:
            reasons.append(
                Reason(
                    "size-over-cap",
                    BLOCK,
                    f"the artifact is {item.size:,} bytes; category {slug!r} takes at most "
                    f"{policy.max_bytes:,}",
                )
            )
        with default_storage.open(item.storage_key, "rb") as stored:
            kind = rules.sniff(stored.read(rules.HEAD_BYTES))
            if not rules.type_allowed(kind, policy.allowed):
                reasons.append(
                    Reason(
                        "file-type-not-allowed",
                        FLAG,
                        f"the artifact's content is {kind}, which category {slug!r} does not "
                        f"take (it takes {', '.join(policy.allowed)})",
                    )
                )
            reasons.extend(self._archive_reasons(kind, stored, item, policy))
        return reasons

    def _archive_reasons(
        self, kind: str, stored: BinaryIO, item: ModerationItem, policy: CategoryPolicy
    ) -> list[Reason]:
        if kind not in rules.TYPE_GROUPS["archive"]:
            return []
        limits = archive_limits()
        stored.seek(0)
        try:
            findings = rules.inspect_archive(kind, stored, packed_size=item.size, limits=limits)
        except rules.ARCHIVE_ERRORS as exc:
            return [rules.archive_unreadable(kind, exc)]
        if findings is None:
            return []
        return rules.archive_reasons(findings, packed_size=item.size, limits=limits, policy=policy)


# --- http --------------------------------------------------------------------------------------


class HttpBackend:
    name = "http"

    def __init__(self, base_url: str, *, token: str = "", timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.trust_env = False
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def moderate(self, item: ModerationItem) -> Verdict:
        try:
            if item.subject == ARTIFACT:
                with default_storage.open(item.storage_key, "rb") as stored:
                    response = self.session.post(
                        f"{self.base_url}/v1/artifacts",
                        params={
                            "sku": item.sku,
                            "partner": item.partner,
                            "category": item.category_path,
                            "sha256": item.sha256,
                            "size": str(item.size),
                        },
                        data=_chunks(stored),
                        headers={"Content-Type": "application/octet-stream"},
                        timeout=self.timeout,
                        allow_redirects=False,
                    )
            else:
                response = self.session.post(
                    f"{self.base_url}/v1/reviews",
                    json={
                        "subject": item.subject,
                        "sku": item.sku,
                        "partner": item.partner,
                        "category": item.category_path,
                        "version": item.version,
                        "texts": dict(item.texts or {}),
                    },
                    timeout=self.timeout,
                    allow_redirects=False,
                )
        except requests.RequestException as exc:
            raise ModerationUnavailable(f"the moderation service is unreachable: {exc}") from exc
        if response.status_code != 200:
            raise ModerationUnavailable(f"the moderation service answered {response.status_code}")
        return Verdict(*_parse_verdict(response.content), self.name)


def _chunks(stored: BinaryIO, size: int = 1024 * 1024) -> Any:
    while chunk := stored.read(size):
        yield chunk


REASONS_MAX = 20
TEXT_MAX = 300


def _parse_verdict(body: bytes) -> tuple[str, tuple[Reason, ...]]:
    """The outcome and reasons of a policy service's answer; ModerationUnavailable for one that
    is not a verdict. A reason without its own outcome takes the verdict's."""
    try:
        document = json.loads(body)
    except ValueError:
        raise ModerationUnavailable("the moderation service answered something not JSON") from None
    if not isinstance(document, dict) or document.get("outcome") not in (PASS, FLAG, BLOCK):
        raise ModerationUnavailable("the moderation service's answer has no valid outcome")
    outcome = document["outcome"]
    raw = document.get("reasons", [])
    if not isinstance(raw, list) or not all(isinstance(entry, dict) for entry in raw):
        raise ModerationUnavailable("the moderation service's reasons are not a list of objects")
    reasons = []
    for entry in raw[:REASONS_MAX]:
        code, message = entry.get("code"), entry.get("message", "")
        if not isinstance(code, str) or not code or not isinstance(message, str):
            raise ModerationUnavailable("a reason of the moderation service has no code")
        reason_outcome = entry.get("outcome", outcome if outcome != PASS else FLAG)
        if reason_outcome not in (FLAG, BLOCK):
            reason_outcome = FLAG
        reasons.append(Reason(code[:64], reason_outcome, message[:TEXT_MAX]))
    if outcome != PASS and not reasons:
        reasons.append(Reason("policy-service", outcome, f"the policy service says {outcome}"))
    return outcome, tuple(reasons)


def get_backend() -> ModerationBackend:
    """The configured backend (settings are read per call, never at import)."""
    if settings.MODERATION_BACKEND == "http":
        return HttpBackend(
            settings.MODERATION_URL,
            token=settings.MODERATION_TOKEN,
            timeout=settings.MODERATION_TIMEOUT_SECONDS,
        )
    return LocalBackend()
