"""Preview sessions: opened by a buyer, started on a worker, ended, torn down.

    requested → starting → ready → ended (expired, ended, revoked, failed, rotated) → torn down

A sample's session is ready at once (there is nothing to start); a sandbox's is started by the
`preview_start` task. Each transition but `starting` appends its audit event in the same
transaction: `preview.created`, `.ready`, `.ended` (`.failed` when the reason is a failure),
`.torn_down`. Teardown runs on a worker after the end commits; the sweep (previews.services.upkeep)
catches what a lost task or a killed worker left.
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Min, Q, QuerySet
from django.utils import timezone

from audit.services import audit_append
from catalog.models import Sku, SkuStatus
from marketplace.actors import Actor
from marketplace.models import User
from previews import metrics, notify
from previews.exceptions import (
    PreviewCapacityFull,
    PreviewLimitReached,
    PreviewNotAvailable,
    PreviewNotFound,
    PreviewsPaused,
)
from previews.locks import preview_pool_lock, session_lock
from previews.models import (
    EndReason,
    MaterialKind,
    PreviewFile,
    PreviewPause,
    PreviewSession,
    SessionStatus,
)
from previews.provisioners import MaterialFile, ProvisionFailed, StartRequest, provisioner_get
from previews.selectors import material_current, token_hash

logger = logging.getLogger(__name__)

SYSTEM = Actor.service("previews")
TOKEN_BYTES = 32  # 256 bits
DETAIL_MAX = 500


def preview_url(token: str) -> str:
    base = (settings.PREVIEW_BASE_URL or settings.PUBLIC_URL).rstrip("/")
    return f"{base}/previews/{token}/"


@dataclass(frozen=True)
class PreviewOpened:
    session: PreviewSession
    token: str  # given once; only its hash is kept

    @property
    def url(self) -> str:
        return preview_url(self.token)


def _seconds_until(moment: datetime, now: datetime) -> int:
    return max(1, math.ceil((moment - now).total_seconds()))


def _limits_check(buyer: User, now: datetime, *, sandboxed: bool) -> None:
    """Raises PreviewLimitReached or PreviewCapacityFull, each with the seconds until a place
    frees. The capacity counts sandboxes (a sample's session runs nothing). Caller holds the
    pool lock."""
    mine = PreviewSession.objects.filter(buyer=buyer)
    open_mine = mine.open()
    if open_mine.count() >= settings.PREVIEW_MAX_OPEN_PER_BUYER:
        soonest = open_mine.aggregate(at=Min("expires_at"))["at"]
        wait = _seconds_until(soonest, now)
        raise PreviewLimitReached(
            f"You have {settings.PREVIEW_MAX_OPEN_PER_BUYER} previews open, the most allowed; "
            f"end one (DELETE /api/v1/previews/{{id}}) or wait {wait} s for one to expire.",
            extra={"limit": "open", "retry_after": wait},
        )
    hour_ago = now - timedelta(hours=1)
    recent = mine.filter(created_at__gt=hour_ago)
    if recent.count() >= settings.PREVIEW_MAX_STARTED_PER_HOUR:
        oldest = recent.aggregate(at=Min("created_at"))["at"]
        wait = _seconds_until(oldest + timedelta(hours=1), now)
        raise PreviewLimitReached(
            f"You have started {settings.PREVIEW_MAX_STARTED_PER_HOUR} previews in the last "
            f"hour, the most allowed; try again in {wait} s.",
            extra={"limit": "hourly", "retry_after": wait},
        )
    everyone = PreviewSession.objects.open().filter(kind=MaterialKind.SANDBOX)
    if sandboxed and everyone.count() >= settings.PREVIEW_CAPACITY:
        soonest = everyone.aggregate(at=Min("expires_at"))["at"]
        raise PreviewCapacityFull(
            "Every preview sandbox is in use; try again shortly.",
            retry_after=min(_seconds_until(soonest, now), 60),
        )


def _pause_in_force(sku: Sku) -> PreviewPause | None:
    return PreviewPause.objects.filter(
        Q(sku__isnull=True) | Q(sku=sku), lifted_at__isnull=True
    ).first()


def preview_open_blockers(sku: Sku) -> list[str]:
    """Why a buyer cannot open a preview of `sku` (empty: they can)."""
    reasons = []
    if sku.status != SkuStatus.ACTIVE:
        reasons.append(f"{sku.slug} is not on sale ({sku.status})")
    if not sku.preview_enabled:
        reasons.append(f"{sku.slug} has no preview enabled")
    elif material_current(sku) is None:
        reasons.append(f"{sku.slug} has no preview material")
    return reasons


@transaction.atomic
def preview_open(*, buyer: User, sku_slug: str) -> PreviewOpened:
    """Opens a preview session of an active SKU for `buyer`.

    Raises PreviewNotFound (no such SKU), PreviewNotAvailable (409, naming why), PreviewsPaused
    or PreviewCapacityFull (503), PreviewLimitReached (429); nothing is written then. Records
    `preview.created` (and `preview.ready` for a sample); a sandbox's start and every session's
    expiry are handed to the workers once this commits.
    """
    sku_id = Sku.objects.filter(slug=sku_slug).values_list("pk", flat=True).first()
    if sku_id is None:
        raise PreviewNotFound(f"There is no SKU {sku_slug}.")
    preview_pool_lock()
    # Read after the lock: a switch-off or a pause committed before it is seen.
    sku = Sku.objects.get(pk=sku_id)
    reasons = preview_open_blockers(sku)
    if reasons:
        raise PreviewNotAvailable(
            f"{sku.slug} cannot be previewed: " + "; ".join(reasons) + ".", reasons=reasons
        )
    material = material_current(sku)
    if material is None:  # withdrawn between the two reads
        raise PreviewNotAvailable(f"{sku.slug} has no preview material.", reasons=["no material"])
    pause = _pause_in_force(sku)
    if pause is not None:
        raise PreviewsPaused(
            f"Previews of {sku.slug} are paused by the operators; try again later."
        )
    now = timezone.now()
    sandboxed = material.kind == MaterialKind.SANDBOX
    _limits_check(buyer, now, sandboxed=sandboxed)
    ttl = min(sku.preview_ttl_seconds, settings.PREVIEW_MAX_TTL_SECONDS)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    session = PreviewSession(
        buyer=buyer,
        sku=sku,
        material=material,
        kind=material.kind,
        token_hash=token_hash(token),
        provisioner=settings.PREVIEW_PROVISIONER if sandboxed else "",
        created_at=now,
        expires_at=now + timedelta(seconds=ttl),
    )
    session.environment_id = session.id.hex
    if not sandboxed:
        session.status = SessionStatus.READY
        session.ready_at = now
    session.save(force_insert=True)
    # Registered before the audit events' own after-commit work (the sealer's wake-up), so the
    # sandbox's start is the first message a worker gets: it is what the buyer waits for.
    _after_commit(session, start=sandboxed)
    actor = Actor.of_user(buyer)
    audit_append(
        actor=actor,
        action="preview.created",
        subject=("preview", session.id),
        data={
            "sku": sku.slug,
            "kind": material.kind,
            "material_version": material.version,
            "material_digest": material.digest,
            "provisioner": session.provisioner,
            "ttl_seconds": ttl,
            "expires_at": session.expires_at.isoformat(),
        },
    )
    if not sandboxed:
        audit_append(actor=actor, action="preview.ready", subject=("preview", session.id), data={})
    return PreviewOpened(session=session, token=token)


def _after_commit(session: PreviewSession, *, start: bool) -> None:
    from previews import tasks

    session_id = str(session.id)
    if start:
        transaction.on_commit(lambda: tasks.preview_start.delay(session_id), robust=True)
    expires_at = session.expires_at
    transaction.on_commit(
        lambda: tasks.preview_expire.apply_async((session_id,), eta=expires_at), robust=True
    )


def _locked(session_id: Any) -> PreviewSession:
    """session_lock for a session known to exist (sessions are never deleted)."""
    session = session_lock(session_id)
    if session is None:
        raise PreviewNotFound(f"There is no preview {session_id}.")
    return session


def _start_request(session: PreviewSession) -> StartRequest:
    files = tuple(
        MaterialFile(path=f.path, storage_key=f.storage_key, sha256=f.sha256, size=f.size)
        for f in PreviewFile.objects.filter(material=session.material).order_by("path")
    )
    return StartRequest(
        session_id=str(session.id),
        environment_id=session.environment_id,
        sku_slug=session.sku.slug,
        material_digest=session.material.digest,
        material_version=session.material.version,
        command=list(session.material.command),
        files=files,
        expires_at=session.expires_at.timestamp(),
    )


def preview_start(*, session_id: Any) -> str:
    """Starts a requested session's sandbox (on a worker) and marks it ready, or failed with
    the reason. Safe to run twice: only a `requested` session is started; a `starting` one
    found again is a start that a killed worker left unfinished, and is failed and torn down.
    Answers the session's status afterwards."""
    with transaction.atomic():
        session = session_lock(session_id)
        if session is None:
            return "missing"
        if session.status == SessionStatus.STARTING:
            _end(
                session,
                reason=EndReason.FAILED,
                detail="the worker starting its sandbox stopped before it was ready",
                actor=SYSTEM,
            )
            return session.status
        if session.status != SessionStatus.REQUESTED:
            return session.status
        now = timezone.now()
        if session.is_expired_at(now):
            _end(
                session, reason=EndReason.EXPIRED, detail="expired before it started", actor=SYSTEM
            )
            return session.status
        session.status = SessionStatus.STARTING
        session.started_at = now
        session.host = socket.gethostname()[:255]
        session.save(update_fields=["status", "started_at", "host"])
    request = _start_request(session)
    provisioner = provisioner_get(session.provisioner)
    try:
        environment = provisioner.start(request, timeout=settings.PREVIEW_START_TIMEOUT_SECONDS)
    except ProvisionFailed as exc:
        return _start_failed(session_id, exc.detail, torn_down=True)
    except Exception as exc:
        logger.exception("preview %s: the sandbox's start failed unexpectedly", session_id)
        with contextlib.suppress(Exception):  # whatever the start had made
            provisioner.teardown(session.environment_id)
        return _start_failed(
            session_id, f"the sandbox could not be started: {exc}", torn_down=False
        )
    with transaction.atomic():
        session = _locked(session_id)
        if session.status == SessionStatus.STARTING:
            now = timezone.now()
            session.status = SessionStatus.READY
            session.ready_at = now
            session.endpoint = environment.endpoint[:500]
            session.host = (environment.host or session.host)[:255]
            session.save(update_fields=["status", "ready_at", "endpoint", "host"])
            notify.session_changed(session.pk)
            latency = (now - session.created_at).total_seconds()
            audit_append(
                actor=SYSTEM,
                action="preview.ready",
                subject=("preview", session.id),
                data={"host": session.host, "start_ms": round(latency * 1000)},
            )
            transaction.on_commit(
                lambda: metrics.start_latency.labels(outcome="ready").observe(latency)
            )
            return session.status
    # Ended while it started (revoked, expired, its buyer ended it): nothing may keep running.
    # Its teardown may already have run and found nothing (the sandbox did not exist yet), so
    # this start removes what it made itself, whatever the session's status says now.
    found = provisioner.teardown(environment.environment_id)
    preview_teardown(session_id=session_id, found_before=found)
    return SessionStatus.TORN_DOWN


def _start_failed(session_id: Any, detail: str, *, torn_down: bool) -> str:
    with transaction.atomic():
        session = _locked(session_id)
        if session.is_open():
            _end(session, reason=EndReason.FAILED, detail=detail, actor=SYSTEM)
            latency = (timezone.now() - session.created_at).total_seconds()
            transaction.on_commit(
                lambda: metrics.start_latency.labels(outcome="failed").observe(latency)
            )
    preview_teardown(session_id=session_id)
    return SessionStatus.TORN_DOWN


def _end(session: PreviewSession, *, reason: str, detail: str, actor: Actor) -> None:
    """Ends one open session. Caller holds its lock (and the pool lock when counting matters
    to it). Its teardown is handed to a worker once the caller's transaction commits."""
    from previews import tasks

    now = timezone.now()
    session.status = SessionStatus.ENDED
    session.end_reason = reason
    session.end_detail = detail[:DETAIL_MAX]
    session.ended_at = now
    session.save(update_fields=["status", "end_reason", "end_detail", "ended_at"])
    notify.session_changed(session.pk)
    audit_append(
        actor=actor,
        action="preview.failed" if reason == EndReason.FAILED else "preview.ended",
        subject=("preview", session.id),
        data={"reason": reason, "detail": session.end_detail},
    )
    session_id = str(session.id)
    transaction.on_commit(lambda: metrics.sessions_ended.labels(reason=reason).inc())
    transaction.on_commit(lambda: tasks.preview_teardown.delay(session_id), robust=True)


@transaction.atomic
def preview_end(*, session_id: Any, reason: str, detail: str = "", actor: Actor) -> PreviewSession:
    """Ends a session if it is open (a later call finds it ended and changes nothing). The token
    answers 410 with `reason` from the commit on."""
    session = session_lock(session_id)
    if session is None:
        raise PreviewNotFound(f"There is no preview {session_id}.")
    if session.is_open():
        _end(session, reason=reason, detail=detail, actor=actor)
    return session


def sessions_end(
    *, sessions: QuerySet[PreviewSession], reason: str, detail: str, actor: Actor
) -> list[PreviewSession]:
    """Ends every open session of `sessions`, locked in primary-key order. Caller is in a
    transaction and holds the pool lock."""
    ended = []
    for session in (
        sessions.select_for_update(of=("self",)).select_related("material", "sku").order_by("pk")
    ):
        if session.is_open():
            _end(session, reason=reason, detail=detail, actor=actor)
            ended.append(session)
    return ended


def preview_buyer_end(*, buyer: User, session_id: Any) -> PreviewSession:
    """The buyer's DELETE: ends their own session (another buyer's is PreviewNotFound)."""
    if not PreviewSession.objects.filter(pk=session_id, buyer=buyer).exists():
        raise PreviewNotFound(f"You have no preview {session_id}.")
    return preview_end(
        session_id=session_id,
        reason=EndReason.ENDED,
        detail="ended by the buyer",
        actor=Actor.of_user(buyer),
    )


def preview_teardown(*, session_id: Any, found_before: bool = False) -> str:
    """Tears an ended session's sandbox down (on a worker) and marks it torn down. Safe to run
    twice; a provisioner error is raised for the task to retry, the session staying ended.
    `found_before`: the caller already tore a sandbox of it down (recorded as found)."""
    session = PreviewSession.objects.select_related("material", "sku").filter(pk=session_id).first()
    if session is None or session.status != SessionStatus.ENDED:
        return session.status if session else "missing"
    found = found_before
    if session.provisioner:
        found = provisioner_get(session.provisioner).teardown(session.environment_id) or found
    with transaction.atomic():
        session = _locked(session_id)
        if session.status != SessionStatus.ENDED:
            return session.status
        now = timezone.now()
        session.status = SessionStatus.TORN_DOWN
        session.torn_down_at = now
        session.save(update_fields=["status", "torn_down_at"])
        lag = None
        if session.end_reason == EndReason.EXPIRED:
            lag = max((now - session.expires_at).total_seconds(), 0.0)
            transaction.on_commit(lambda: metrics.teardown_lag.observe(lag))
        audit_append(
            actor=SYSTEM,
            action="preview.torn_down",
            subject=("preview", session.id),
            data={
                "reason": session.end_reason,
                "sandbox_found": found,
                "lag_ms": None if lag is None else round(lag * 1000),
            },
        )
    return SessionStatus.TORN_DOWN


def preview_expire(*, session_id: Any) -> str:
    """The per-session task at expiry: ends the session (`expired`) and tears it down at once."""
    with transaction.atomic():
        session = session_lock(session_id)
        if session is None:
            return "missing"
        if session.is_open():
            if not session.is_expired_at(timezone.now()):
                return session.status  # the sweep ends it when its time comes
            _end(session, reason=EndReason.EXPIRED, detail="its time ran out", actor=SYSTEM)
    return preview_teardown(session_id=session_id)


def preview_wait(*, session: PreviewSession, seconds: float) -> PreviewSession:
    """Polls the session until it is no longer requested or starting, for at most `seconds`
    (capped by MARKETPLACE_PREVIEW_READY_WAIT_SECONDS); answers it as it then is."""
    deadline = time.monotonic() + min(seconds, settings.PREVIEW_READY_WAIT_SECONDS)
    while session.status in (SessionStatus.REQUESTED, SessionStatus.STARTING):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        # Bounded below the cache's socket timeout; the row is read again after each wake-up.
        notify.wait_changed(session.pk, min(left, 1.0))
        session.refresh_from_db(
            fields=["status", "ready_at", "end_reason", "end_detail", "ended_at", "endpoint"]
        )
    return session
