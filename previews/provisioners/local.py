"""The local provisioner: each session's sandbox is a bubblewrap process tree on this host.

The worker that starts a sandbox is its parent (bwrap's ``--die-with-parent``): a worker that
stops takes its sandboxes with it, and the sweep then ends their sessions as failed. Web servers
reach a sandbox over its Unix socket under ``MARKETPLACE_PREVIEW_DIR``, so web and workers must
share this host and that folder (docs/previews.md; the Kubernetes provisioner has no such bound).

The material is copied from storage into ``<dir>/material/<digest>`` once per digest, every file
checked against its recorded SHA-256, and bound read-only into each sandbox that uses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections import deque
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.core.files.storage import default_storage

from previews import sandbox
from previews.provisioners.base import (
    Environment,
    MaterialFile,
    ProvisionFailed,
    Running,
    StartRequest,
)

logger = logging.getLogger(__name__)

_OUTPUT_KEPT = 2048
SOCKET_PATH_MAX = 107  # sun_path is 108 bytes with its terminating NUL
# A start's copy of material is bounded by its task's time limit (previews.tasks): a staging
# folder older than this was left by a worker that died.
STAGING_ABANDONED_SECONDS = 3600
# The sandboxes this process started, by environment id: it is their parent, so it reaps them.
_started: dict[str, sandbox.Sandbox] = {}
_started_lock = threading.Lock()


def _traversable(path: Path) -> None:
    """Creates `path` and makes it passable (o+x) but not listable by others: the sandbox's host
    uid resolves the bound folders by path below it."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o711)


class LocalProvisioner:
    name = "local"

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root or settings.PREVIEW_DIR)

    # --- material ----------------------------------------------------------------------------

    @property
    def material_root(self) -> Path:
        return self.root / "material"

    @property
    def socket_root(self) -> Path:
        return self.root / "sockets"

    def material_dir(self, digest: str, files: tuple[MaterialFile, ...]) -> Path:
        """The verified local copy of the material, made once per digest (atomically: a copy
        interrupted half-way is never used)."""
        _traversable(self.root)
        _traversable(self.material_root)
        target = self.material_root / digest
        if target.is_dir():
            return target
        staging = self.material_root / f".{digest}.{uuid.uuid4().hex}"
        staging.mkdir(mode=0o755)
        try:
            for item in files:
                self._copy(item, staging)
            for folder in [staging, *(p for p in staging.rglob("*") if p.is_dir())]:
                folder.chmod(0o755)
            try:
                staging.rename(target)
            except OSError:
                if not target.is_dir():  # not another worker's copy winning the race
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    @staticmethod
    def _copy(item: MaterialFile, staging: Path) -> None:
        relative = PurePosixPath(item.path)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise ProvisionFailed(f"the material names an unsafe path: {item.path!r}")
        destination = staging.joinpath(*relative.parts)
        destination.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        with default_storage.open(item.storage_key, "rb") as source, open(destination, "wb") as out:
            while chunk := source.read(1024 * 1024):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
        if digest.hexdigest() != item.sha256 or size != item.size:
            raise ProvisionFailed(
                f"the stored file {item.path} does not match its recorded SHA-256; "
                "upload the material again"
            )
        destination.chmod(0o644)

    def material_prune(self, keep: set[str]) -> list[str]:
        """Removes local copies of material whose digest is not in `keep`, and copies left
        half-made long ago; answers them. A half-made copy younger than
        STAGING_ABANDONED_SECONDS is another worker's, under way."""
        removed = []
        if not self.material_root.is_dir():
            return removed
        abandoned_before = time.time() - STAGING_ABANDONED_SECONDS
        for entry in self.material_root.iterdir():
            if entry.name.startswith("."):
                with contextlib.suppress(OSError):
                    if entry.stat().st_mtime < abandoned_before:
                        shutil.rmtree(entry, ignore_errors=True)
                        removed.append(entry.name)
                continue
            if entry.name not in keep:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
        return removed

    # --- sandboxes ---------------------------------------------------------------------------

    def start(self, request: StartRequest, *, timeout: float) -> Environment:
        _traversable(self.root)
        reason = sandbox.available() or self._unreachable()
        if reason:
            raise ProvisionFailed(reason)
        env_id = request.environment_id
        ttl = request.expires_at - time.time()
        if ttl <= 0:
            raise ProvisionFailed("the session expired before its sandbox could start")
        try:
            material = self.material_dir(request.material_digest, request.files)
        except OSError as exc:
            raise ProvisionFailed(f"the material could not be copied from storage: {exc}") from exc
        _traversable(self.root)
        # The platform's own: a sandbox never sees it (it inherits the listening socket).
        self.socket_root.mkdir(mode=0o700, exist_ok=True)
        self.socket_root.chmod(0o700)
        socket_dir = self.socket_root / env_id
        if len(str(socket_dir / sandbox.SOCKET_NAME).encode()) > SOCKET_PATH_MAX:
            raise ProvisionFailed(
                f"the socket path under {self.root} is longer than a Unix socket's "
                f"{SOCKET_PATH_MAX} bytes; set MARKETPLACE_PREVIEW_DIR to a shorter folder"
            )
        shutil.rmtree(socket_dir, ignore_errors=True)
        socket_dir.mkdir(mode=0o700)
        spec = sandbox.SandboxSpec(
            material_dir=material,
            command=list(request.command),
            socket_dir=socket_dir,
            memory_bytes=settings.PREVIEW_SANDBOX_MEMORY_BYTES,
            max_processes=settings.PREVIEW_SANDBOX_PROCESSES,
            cpu_seconds=settings.PREVIEW_SANDBOX_CPU_SECONDS,
            tmpfs_bytes=settings.PREVIEW_SANDBOX_TMPFS_BYTES,
            ttl_seconds=ttl,
        )
        try:
            box = sandbox.Sandbox.start(spec, stdout=subprocess.PIPE, sandbox_id=env_id)
        except OSError as exc:
            shutil.rmtree(socket_dir, ignore_errors=True)
            raise ProvisionFailed(f"bubblewrap could not be started: {exc}") from exc
        output = _drain(box.process)
        with _started_lock:
            _started[env_id] = box
        if not box.wait_ready(timeout):
            exited = box.process.poll()
            self.teardown(env_id)
            said = b"".join(output).decode("utf-8", "replace").strip()[-300:]
            why = (
                f"the command exited with status {exited}"
                if exited is not None
                else f"the command did not answer HTTP on its socket within {timeout:g} s"
            )
            raise ProvisionFailed(f"{why}: {said}" if said else why)
        return Environment(
            environment_id=env_id,
            endpoint=f"unix:{spec.socket_path}",
            host=socket.gethostname(),
        )

    def _unreachable(self) -> str | None:
        """As root, each sandbox is its own host uid, which must pass (o+x) through every
        folder above the preview folder: bwrap resolves the bound folders by path."""
        if os.geteuid() != 0:
            return None
        for folder in self.root.resolve().parents:
            if not folder.stat().st_mode & 0o001:
                return (
                    f"{folder} is not passable by other users (o+x), so sandboxes cannot reach "
                    f"{self.root}; chmod o+x it or set MARKETPLACE_PREVIEW_DIR elsewhere"
                )
        return None

    def teardown(self, environment_id: str) -> bool:
        found = False
        with _started_lock:
            box = _started.pop(environment_id, None)
        if box is not None:
            found = box.alive()
            box.stop()
        for pid, env_id in _outer_bwraps().items():
            if env_id == environment_id:
                found = True
                with contextlib.suppress(ValueError):
                    sandbox.kill_sandbox(pid)
        deadline = time.monotonic() + 3
        while sandbox.processes_of(environment_id) and time.monotonic() < deadline:
            time.sleep(0.02)
        socket_dir = self.socket_root / environment_id
        if socket_dir.exists():
            shutil.rmtree(socket_dir, ignore_errors=True)
        _reap()
        return found

    def alive(self, environment_id: str) -> bool | None:
        return environment_id in _outer_bwraps().values()

    def running(self) -> list[Running]:
        """The sandboxes of this preview folder: each has its socket folder here from before
        it starts until it is torn down. Another platform on the host (another deployment,
        another test process) runs its own under its own folder, in sessions this database
        does not hold: its collector sees to them, this one must not kill them."""
        return [
            Running(environment_id=env_id, expires_at=sandbox.sandbox_expires_at(pid))
            for pid, env_id in _outer_bwraps().items()
            if (self.socket_root / env_id).is_dir()
        ]


def _outer_bwraps() -> dict[int, str]:
    found = {}
    for pid in sandbox.sandboxes_running():
        env_id = sandbox.sandbox_id_of(pid)
        if env_id:
            found[pid] = env_id
    return found


def _drain(process: subprocess.Popen[bytes]) -> deque[bytes]:
    """Reads the sandbox's output in a thread, keeping only its last bytes (for a failure's
    reason), so a chatty command never blocks on a full pipe."""
    kept: deque[bytes] = deque(maxlen=16)

    def read() -> None:
        if process.stdout is None:
            return
        with contextlib.suppress(OSError, ValueError):
            while chunk := process.stdout.read1(_OUTPUT_KEPT):  # type: ignore[attr-defined]
                kept.append(chunk[-_OUTPUT_KEPT:])

    threading.Thread(target=read, daemon=True, name="preview-output").start()
    return kept


def _reap() -> None:
    """Forgets sandboxes of this process that have ended (another process may have killed them)."""
    with _started_lock:
        for env_id, box in list(_started.items()):
            if not box.alive():
                box.stop()
                del _started[env_id]
