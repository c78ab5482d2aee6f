"""The local preview sandbox: one process tree under bubblewrap (``bwrap``).

Standard library only, no Django: sessions, the API and the provisioners are built around it.

A sandbox gets its own user, PID, IPC, UTS, cgroup and network namespaces. The network namespace
has only a loopback of its own (bwrap brings it up: 127.0.0.1 inside is not the host's), so
nothing inside can reach any other address; the one way in is a Unix socket that the platform
binds and listens on in ``socket_dir`` (on the host, never bound into the sandbox) and hands to the
command as an open file descriptor (``PREVIEW_LISTEN_FD``, and ``LISTEN_FDS=1`` as systemd's socket
activation says): the sandbox can accept on it, but has no host folder it could write to or swap
the socket's path in. Nested user namespaces are refused (``--disable-userns``). The root is an
empty tmpfs made by bwrap, read-only once it holds read-only binds of ``/usr`` (with the
merged-usr ``/bin`` and ``/lib`` links) and ``/lib64``: enough to run ``/usr/bin/python3`` and
coreutils, and nothing of ``/etc``, ``/var``,
``/root``, ``/home``, ``/work`` or the platform's data folder, which are simply absent. ``/etc`` is
left out on purpose (Python in isolated mode does not need it, and it holds ``shadow``).

The limits (see ``_limit_child``) are rlimits set on bwrap before it execs, inherited by
everything inside. ``RLIMIT_NPROC`` counts the tasks of a *host* uid, and the kernel does not
enforce it for root, so when the platform runs as root each sandbox runs as its own unprivileged
host uid, picked at random from ``HOST_UID_BASE`` + [0, 65536) and mapped to ``nobody`` (65534)
inside: its process count is its own, it cannot signal another sandbox, and the host paths it could
reach by name are only world-readable ones. The preview material and the programs are opened by
the platform and bound by file descriptor (``--ro-bind-fd``), so the sandbox uid needs no access
to the folders that hold them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

BWRAP = "/usr/bin/bwrap"
MARKER = "PREVIEW_SANDBOX"
EXPIRES = "PREVIEW_SANDBOX_EXPIRES"
SOCKET_NAME = "http.sock"
PROGRAM_DIR = "/sandbox-bin"
SANDBOX_TMP = "/tmp"  # noqa: S108 - inside the sandbox: its own size-capped tmpfs
SANDBOX_UID = 65534  # nobody, inside the user namespace
HOST_UID_BASE = 420_000  # host uids HOST_UID_BASE..+65535 are reserved for sandboxes (root only)
DEMO_SERVER = Path(__file__).with_name("demo_server.py")
MAX_OPEN_FILES = 256


@dataclass(frozen=True)
class SandboxSpec:
    """What runs in a sandbox and within which limits.

    ``material_dir`` is bound read-only at ``/preview`` (the working directory) and must be
    world-readable below itself and reachable by path (o+x on every parent) by the sandbox's host
    uid, as bwrap 0.8 resolves a bound fd's path again; ``socket_dir`` is the platform's own
    folder (0700) where it binds the socket it hands to the command; ``programs`` are single files
    bound read-only at ``/sandbox-bin/<name>``.
    """

    material_dir: Path
    command: list[str]
    socket_dir: Path
    memory_bytes: int = 256 * 1024 * 1024
    max_processes: int = 64
    cpu_seconds: int = 60
    tmpfs_bytes: int = 16 * 1024 * 1024
    ttl_seconds: float = 15 * 60
    programs: tuple[Path, ...] = field(default=())

    @property
    def socket_path(self) -> Path:
        return self.socket_dir / SOCKET_NAME


def demo_command() -> list[str]:
    """The command that serves ``/preview`` over the socket; put ``DEMO_SERVER`` in ``programs``."""
    return ["/usr/bin/python3", "-I", "-B", f"{PROGRAM_DIR}/{DEMO_SERVER.name}"]


def bwrap_argv(
    spec: SandboxSpec,
    *,
    sandbox_id: str,
    expires_at: float,
    fds: dict[str, int],
    listen_fd: int,
) -> list[str]:
    """The bwrap command line; ``fds`` maps each bind destination to an open ``O_PATH`` fd, and
    ``listen_fd`` is the listening socket the command inherits."""
    argv = [
        BWRAP,
        "--unshare-all",  # pid, ipc, uts, net, cgroup, and a user namespace where it can
        "--unshare-user",  # always, so the next can shut the door behind it
        # No user namespace inside: the kernel's unprivileged-namespace surface stays shut.
        "--disable-userns",
        "--assert-userns-disabled",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
        # --clearenv and --setenv act in order, so the marker survives.
        "--setenv", MARKER, sandbox_id,
        "--setenv", EXPIRES, str(int(expires_at)),
        "--setenv", "PATH", "/usr/bin:/bin",
        "--setenv", "HOME", SANDBOX_TMP,
        "--setenv", "PREVIEW_LISTEN_FD", str(listen_fd),
        "--setenv", "LISTEN_FDS", "1",
        *_system_binds(),
        "--proc", "/proc",
        "--dev", "/dev",
        "--perms", "1777", "--size", str(spec.tmpfs_bytes), "--tmpfs", SANDBOX_TMP,
    ]  # fmt: skip
    for dest, fd in fds.items():
        argv += ["--ro-bind-fd", str(fd), dest]
    argv += [
        # The root and /dev are tmpfs that bwrap makes, writable by the sandbox's uid and of no
        # size limit: read-only once everything is mounted, so /tmp (capped) is the one place
        # to write.
        "--remount-ro", "/dev",
        "--remount-ro", "/",
        "--chdir", "/preview",
        "--uid", str(SANDBOX_UID),
        "--gid", str(SANDBOX_UID),
        "--cap-drop", "ALL",
        "--hostname", "preview",
        "--",
        *spec.command,
    ]  # fmt: skip
    return argv


def _system_binds() -> list[str]:
    """``/usr`` read-only, and ``/bin``, ``/lib``, ``/lib64``, ``/sbin`` as the host has them."""
    argv = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "lib", "lib64", "sbin"):
        host = Path("/") / name
        if host.is_symlink():
            argv += ["--symlink", os.readlink(host), str(host)]
        elif host.is_dir():
            argv += ["--ro-bind", str(host), str(host)]
    return argv


def _limit_child(spec: SandboxSpec, host_uid: int | None) -> None:
    """Runs in the forked child before bwrap is exec'd: rlimits, then the unprivileged uid.

    All are per process except NPROC (per host uid, hence ``host_uid``): memory in total is
    bounded by ``memory_bytes * max_processes``, CPU time by ``cpu_seconds`` per process (SIGXCPU,
    then SIGKILL a second later) and the whole sandbox by its TTL.
    """
    limits = {
        resource.RLIMIT_AS: (spec.memory_bytes, spec.memory_bytes),
        resource.RLIMIT_NPROC: (spec.max_processes, spec.max_processes),
        resource.RLIMIT_CPU: (spec.cpu_seconds, spec.cpu_seconds + 1),
        resource.RLIMIT_FSIZE: (spec.tmpfs_bytes, spec.tmpfs_bytes),
        resource.RLIMIT_NOFILE: (MAX_OPEN_FILES, MAX_OPEN_FILES),
        resource.RLIMIT_CORE: (0, 0),
    }
    for which, value in limits.items():
        resource.setrlimit(which, value)
    if host_uid is not None:
        os.setgroups([])
        os.setresgid(host_uid, host_uid, host_uid)
        os.setresuid(host_uid, host_uid, host_uid)


def _open_binds(spec: SandboxSpec) -> dict[str, int]:
    fds: dict[str, int] = {}
    try:
        fds["/preview"] = os.open(spec.material_dir, os.O_PATH | os.O_DIRECTORY)
        for program in spec.programs:
            fds[f"{PROGRAM_DIR}/{program.name}"] = os.open(program, os.O_PATH)
    except OSError:
        for fd in fds.values():
            os.close(fd)
        raise
    return fds


class Sandbox:
    """A running sandbox. ``stop()`` it; it also stops at its TTL and when this process dies.

    The TTL timer lives in this process; the expiry is also in bwrap's command line so a garbage
    collector can find what outlived it (``sandboxes_running``, ``sandbox_expires_at``). bwrap's
    ``--die-with-parent`` is armed a few milliseconds after start: a parent killed within that
    window leaves a sandbox for the collector, reparented to init but still marked.
    """

    def __init__(self, spec: SandboxSpec, process: subprocess.Popen[bytes], sandbox_id: str):
        self.spec = spec
        self.process = process
        self.sandbox_id = sandbox_id
        self._timer = threading.Timer(spec.ttl_seconds, self.stop)
        self._timer.daemon = True
        self._timer.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    def start(
        cls,
        spec: SandboxSpec,
        *,
        stdout: int | None = subprocess.DEVNULL,
        sandbox_id: str | None = None,
    ) -> Sandbox:
        """Start ``spec.command`` under bwrap, listening for it on ``spec.socket_path``.

        ``sandbox_id`` (letters, digits, ``-``) is the marker the garbage collector finds it by;
        a random one when not given."""
        sandbox_id = sandbox_id or secrets.token_hex(8)
        if not sandbox_id.replace("-", "").isalnum():
            raise ValueError(f"a sandbox id is letters, digits and dashes: {sandbox_id!r}")
        host_uid = None
        if os.geteuid() == 0:
            host_uid = HOST_UID_BASE + secrets.randbelow(65536)
        os.chmod(spec.socket_dir, 0o700)
        listener = _listen(spec.socket_path)
        try:
            fds = _open_binds(spec)
        except OSError:
            listener.close()
            raise
        listen_fd = listener.fileno()
        argv = bwrap_argv(
            spec,
            sandbox_id=sandbox_id,
            expires_at=time.time() + spec.ttl_seconds,
            fds=fds,
            listen_fd=listen_fd,
        )
        try:
            process = subprocess.Popen(  # noqa: S603 - a fixed binary, our own argv
                argv,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.STDOUT if stdout is not None else None,
                pass_fds=(*fds.values(), listen_fd),
                start_new_session=True,
                preexec_fn=functools.partial(_limit_child, spec, host_uid),
            )
        finally:
            for fd in fds.values():
                os.close(fd)
            # The sandbox holds the only copy: once it is gone, a connect is refused at once
            # rather than queued for a listener nobody runs.
            listener.close()
        return cls(spec, process, sandbox_id)

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, timeout: float = 5.0) -> bool:
        """Whether the command answers an HTTP GET on its socket (False: it died or timed out)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.alive():
            with contextlib.suppress(OSError):
                status, _ = unix_http_get(self.spec.socket_path, "/", timeout=1.0)
                if status:
                    return True
            # Until the socket exists a try costs one failed connect: poll often, as the time
            # to ready is what a buyer waits for.
            time.sleep(0.005)
        return False

    def stop(self, grace: float = 2.0) -> None:
        """SIGTERM to the process group, SIGKILL after ``grace`` seconds; reaps. Idempotent."""
        self._timer.cancel()
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.process.wait()
        # Inside, bwrap's PID 1 gets SIGKILL from --die-with-parent; wait for the namespace to go.
        deadline = time.monotonic() + grace
        while processes_of(self.sandbox_id) and time.monotonic() < deadline:
            time.sleep(0.02)


def _listen(path: Path) -> socket.socket:
    """A listening Unix socket at ``path`` (a stale one is replaced), owner-only."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
        os.chmod(path, 0o600)
        listener.listen(128)
    except OSError:
        listener.close()
        raise
    return listener


def unix_http_get(socket_path: Path, path: str, *, timeout: float = 5.0) -> tuple[int, bytes]:
    """A bare HTTP/1.0 GET over a Unix socket: ``(status, body)``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(str(socket_path))
        conn.sendall(f"GET {path} HTTP/1.0\r\nHost: preview\r\n\r\n".encode())
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    try:
        return int(head.split(b" ", 2)[1]), body
    except (IndexError, ValueError):
        raise OSError(f"not an HTTP answer: {head[:80]!r}") from None


def _proc_read(pid: int, name: str) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes().split(b"\0")
    except OSError:
        return []


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _marked_bwraps() -> dict[int, list[bytes]]:
    marked = {}
    for pid in _pids():
        argv = _proc_read(pid, "cmdline")
        if argv and os.path.basename(argv[0]) == b"bwrap" and MARKER.encode() in argv:
            marked[pid] = argv
    return marked


def _ppid(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rpartition(")")[2].split()[1])


def sandboxes_running() -> list[int]:
    """The pids of the outer bwrap processes of the sandboxes this module started, leaked or not."""
    marked = _marked_bwraps()
    return sorted(pid for pid in marked if _ppid(pid) not in marked)


def sandbox_id_of(pid: int) -> str | None:
    """The marker (sandbox id) in a sandbox's command line."""
    argv = _proc_read(pid, "cmdline")
    with contextlib.suppress(ValueError, IndexError):
        return argv[argv.index(MARKER.encode()) + 1].decode()
    return None


def sandbox_expires_at(pid: int) -> float | None:
    """The expiry (epoch seconds) written in a sandbox's command line, for a garbage collector."""
    argv = _proc_read(pid, "cmdline")
    with contextlib.suppress(ValueError, IndexError):
        return float(argv[argv.index(EXPIRES.encode()) + 1])
    return None


def processes_of(sandbox_id: str) -> list[int]:
    """Every live process of one sandbox: its bwraps (by argv) and what runs inside (by env)."""
    needle = f"{MARKER}={sandbox_id}".encode()
    found = []
    for pid in _pids():
        argv = _proc_read(pid, "cmdline")
        if sandbox_id.encode() in argv or needle in _proc_read(pid, "environ"):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
                    found.append(pid)
    return found


def kill_sandbox(pid: int) -> None:
    """SIGKILL a sandbox by its outer bwrap pid; --die-with-parent takes down the inside."""
    if pid not in sandboxes_running():
        raise ValueError(f"{pid} is not a preview sandbox")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


@functools.cache
def available() -> str | None:
    """Why sandboxes cannot run here (bwrap missing, namespaces refused), or None."""
    if not os.path.exists(BWRAP) and shutil.which("bwrap") is None:
        return f"bubblewrap is not installed ({BWRAP} is missing)"
    probe = [BWRAP, "--unshare-all", *_system_binds(), "--uid", str(SANDBOX_UID)]
    probe += ["--", "/usr/bin/true"]
    uid = HOST_UID_BASE if os.geteuid() == 0 else None
    spec = SandboxSpec(material_dir=Path("/"), command=[], socket_dir=Path("/"))
    try:
        result = subprocess.run(  # noqa: S603
            probe,
            capture_output=True,
            timeout=10,
            check=False,
            preexec_fn=functools.partial(_limit_child, spec, uid),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap cannot start: {exc}"
    if result.returncode != 0:
        return f"bubblewrap cannot create namespaces: {result.stderr.decode().strip()}"
    return None
