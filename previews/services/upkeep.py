"""Keeping the pool clean: the one-minute sweep, the hourly garbage collector, revocation and
"Isolate pool" (the runbooks' "preview sandbox leak" and "breakout")."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Exists, OuterRef, Q
from django.utils import timezone

from audit.services import audit_append
from catalog.models import Sku
from marketplace.actors import Actor
from marketplace.models import User
from previews import metrics
from previews.exceptions import PreviewRefused
from previews.locks import preview_pool_lock, session_lock
from previews.models import (
    OPEN_STATUSES,
    EndReason,
    PreviewMaterial,
    PreviewPause,
    PreviewSession,
    SessionStatus,
)
from previews.provisioners import PROVISIONERS, provisioner_get
from previews.services.sessions import SYSTEM, _end, preview_end, preview_teardown, sessions_end

logger = logging.getLogger(__name__)

SWEEP_BATCH = 500
# An ended session not torn down this long after its end lost its teardown task.
TEARDOWN_GRACE = timedelta(seconds=30)
REASON_MAX = 300


@dataclass
class SweepResult:
    expired: int = 0
    stuck: int = 0
    exited: int = 0
    torn_down: int = 0
    leaked: int = 0
    leaked_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "expired": self.expired,
            "stuck": self.stuck,
            "exited": self.exited,
            "torn_down": self.torn_down,
            "leaked": self.leaked,
        }


def _end_each(ids: list[Any], *, reason: str, detail: str) -> int:
    ended = 0
    for session_id in ids:
        with transaction.atomic():
            session = session_lock(session_id)
            if session is not None and session.is_open():
                _end(session, reason=reason, detail=detail, actor=SYSTEM)
                ended += 1
        preview_teardown(session_id=session_id)
    return ended


def previews_sweep() -> SweepResult:
    """Ends what has expired, what is stuck requested or starting past the start timeout (a lost
    task, a killed worker), and ready sessions whose sandbox has stopped; tears down ended
    sessions whose teardown was lost. Refreshes the gauges. Safe to run anywhere, any time."""
    result = SweepResult()
    now = timezone.now()
    open_sessions = PreviewSession.objects.open()
    expired = list(
        open_sessions.filter(expires_at__lte=now).values_list("pk", flat=True)[:SWEEP_BATCH]
    )
    result.expired = _end_each(expired, reason=EndReason.EXPIRED, detail="its time ran out")

    start_timeout = timedelta(seconds=settings.PREVIEW_START_TIMEOUT_SECONDS)
    never_taken = list(
        open_sessions.filter(
            status=SessionStatus.REQUESTED, created_at__lt=now - start_timeout
        ).values_list("pk", flat=True)[:SWEEP_BATCH]
    )
    result.stuck = _end_each(
        never_taken,
        reason=EndReason.FAILED,
        detail=f"no worker started its sandbox within {start_timeout.total_seconds():g} s",
    )
    # A start waits at most the start timeout for the sandbox; past it and a margin, the worker
    # doing it has gone (its sandbox with it, --die-with-parent, or left for the collector).
    stuck_starting = list(
        open_sessions.filter(
            status=SessionStatus.STARTING,
            started_at__lt=now - start_timeout - timedelta(seconds=15),
        ).values_list("pk", flat=True)[:SWEEP_BATCH]
    )
    result.stuck += _end_each(
        stuck_starting,
        reason=EndReason.FAILED,
        detail="its start did not finish: the worker starting it stopped",
    )
    here = socket.gethostname()
    exited = []
    for session in open_sessions.filter(status=SessionStatus.READY).exclude(provisioner="")[
        :SWEEP_BATCH
    ]:
        if session.provisioner == "local" and session.host and session.host != here:
            continue  # another host's sandbox: its own workers' sweep looks at it
        if provisioner_get(session.provisioner).alive(session.environment_id) is False:
            exited.append(session.pk)
    result.exited = _end_each(exited, reason=EndReason.FAILED, detail="its sandbox stopped")

    lost = PreviewSession.objects.filter(
        status=SessionStatus.ENDED, ended_at__lt=now - TEARDOWN_GRACE
    ).values_list("pk", flat=True)[:SWEEP_BATCH]
    for session_id in list(lost):
        try:
            if preview_teardown(session_id=session_id) == SessionStatus.TORN_DOWN:
                result.torn_down += 1
        except Exception:
            logger.exception("preview %s: teardown failed; the next sweep tries again", session_id)
    gauges_refresh()
    return result


def gauges_refresh() -> None:
    counts = dict.fromkeys(OPEN_STATUSES, 0)
    for row in PreviewSession.objects.open().values("status").annotate(n=Count("pk")):
        counts[row["status"]] = row["n"]
    for status, count in counts.items():
        metrics.sessions_active.labels(status=status).set(count)
    metrics.queue_depth.set(counts[SessionStatus.REQUESTED])
    metrics.capacity.set(settings.PREVIEW_CAPACITY)


def _provisioners_in_use() -> list[str]:
    used = set(
        PreviewSession.objects.exclude(provisioner="")
        .filter(created_at__gt=timezone.now() - timedelta(days=2))
        .values_list("provisioner", flat=True)
        .distinct()
    )
    used.add(settings.PREVIEW_PROVISIONER)
    return [name for name in PROVISIONERS if name in used]


def previews_gc() -> SweepResult:
    """The hourly collector: the sweep, then every sandbox a provisioner runs that no session
    still owns (none at all, or one already torn down) is torn down and counted as leaked
    (`marketplace_preview_leaked_sandboxes_total`, audited `preview.leaked_torn_down`). The
    local provisioner's copies of material no open session and no current version uses are
    removed."""
    result = previews_sweep()
    owned_statuses = (SessionStatus.STARTING, SessionStatus.READY, SessionStatus.ENDED)
    for name in _provisioners_in_use():
        provisioner = provisioner_get(name)
        try:
            running = provisioner.running()
        except Exception:
            logger.exception("previews gc: the %s provisioner cannot list its sandboxes", name)
            continue
        if not running:
            continue
        # Read after listing: a session that started in between is owned, not leaked.
        owned = set(
            PreviewSession.objects.filter(
                provisioner=name,
                status__in=owned_statuses,
                environment_id__in=[item.environment_id for item in running],
            ).values_list("environment_id", flat=True)
        )
        leaked = [item.environment_id for item in running if item.environment_id not in owned]
        for environment_id in list(leaked):
            try:
                provisioner.teardown(environment_id)
            except Exception:
                # One that cannot be torn down now does not keep the others running; the next
                # run finds it again.
                logger.exception("previews gc: %s %s not torn down", name, environment_id)
                leaked.remove(environment_id)
        if leaked:
            metrics.leaked_found.labels(provisioner=name).inc(len(leaked))
            result.leaked += len(leaked)
            result.leaked_ids += leaked
            with transaction.atomic():
                audit_append(
                    actor=SYSTEM,
                    action="preview.leaked_torn_down",
                    subject=("preview-pool", name),
                    data={"count": len(leaked), "environments": sorted(leaked)[:100]},
                )
            logger.warning("previews gc: tore down %d leaked %s sandboxes", len(leaked), name)
    _material_cache_prune()
    return result


def _material_cache_prune() -> None:
    if settings.PREVIEW_PROVISIONER != "local":
        return
    from previews.provisioners.local import LocalProvisioner

    # Each SKU's current version (its newest not withdrawn), and whatever an open session runs.
    newer = PreviewMaterial.objects.filter(
        sku=OuterRef("sku"), withdrawn_at__isnull=True, version__gt=OuterRef("version")
    )
    keep = set(
        PreviewMaterial.objects.filter(
            Q(~Exists(newer), withdrawn_at__isnull=True) | Q(sessions__status__in=OPEN_STATUSES)
        ).values_list("digest", flat=True)
    )
    LocalProvisioner().material_prune(keep)


# --- Revocation and isolation ------------------------------------------------------------------


def preview_revoke(*, session_id: Any, reason: str, actor: Actor) -> PreviewSession:
    """Revokes one session: its token is 410 `revoked` from the commit on, its sandbox is torn
    down by a worker. Records `preview.ended` with the reason."""
    reason = _reason(reason)
    return preview_end(session_id=session_id, reason=EndReason.REVOKED, detail=reason, actor=actor)


def _reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise PreviewRefused("Say why (kept in the audit log).", errors={"reason": ["Required."]})
    return reason[:REASON_MAX]


@dataclass(frozen=True)
class Isolation:
    revoked: int
    pause: PreviewPause | None


@transaction.atomic
def previews_isolate(
    *, sku_id: int | None, reason: str, actor: Actor, pause: bool = True, by: User | None = None
) -> Isolation:
    """ "Isolate pool": revokes every open session of one SKU (or of every SKU, `sku_id` None)
    and, with `pause`, refuses new ones until the pause is lifted. Every SKU at once waits for a
    second person (the `previews.isolate_all` approval, previews.approvals), which calls this.
    Records `preview.pool_isolated`, then `preview.ended` per session."""
    reason = _reason(reason)
    sku = Sku.objects.select_for_update(of=("self",)).get(pk=sku_id) if sku_id else None
    preview_pool_lock()
    made = None
    if pause:
        made = PreviewPause.objects.filter(sku=sku, lifted_at__isnull=True).first()
        if made is None:
            made = PreviewPause.objects.create(sku=sku, reason=reason, created_by=by)
    sessions = PreviewSession.objects.open()
    if sku is not None:
        sessions = sessions.filter(sku=sku)
    audit_append(
        actor=actor,
        action="preview.pool_isolated",
        subject=sku if sku is not None else ("preview-pool", "all"),
        data={"scope": sku.slug if sku else "all", "reason": reason, "paused": pause},
    )
    ended = sessions_end(sessions=sessions, reason=EndReason.REVOKED, detail=reason, actor=actor)
    return Isolation(revoked=len(ended), pause=made)


@transaction.atomic
def preview_pause_lift(*, pause_id: int, actor: Actor, by: User | None = None) -> PreviewPause:
    """Lifts a pause: new sessions are taken again. Records `preview.pause_lifted`."""
    preview_pool_lock()
    pause = (
        PreviewPause.objects.select_for_update(of=("self",)).select_related("sku").get(pk=pause_id)
    )
    if pause.lifted_at is None:
        pause.lifted_at = timezone.now()
        pause.lifted_by = by
        pause.save(update_fields=["lifted_at", "lifted_by"])
        audit_append(
            actor=actor,
            action="preview.pause_lifted",
            subject=pause.sku if pause.sku_id else ("preview-pool", "all"),
            data={"scope": pause.sku.slug if pause.sku_id else "all", "paused_for": pause.reason},
        )
    return pause
