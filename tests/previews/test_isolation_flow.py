"""Isolation through the platform's flow: a real worker starts a sandbox whose command (the
material's server.py, below) tries from inside what a hostile preview would, and reports each
outcome in its HTTP answer, read through /previews/{token}/ as a buyer's browser would."""

import io
import json
import socket
import subprocess
from typing import Any

import pytest

from previews.models import EndReason, PreviewSession, SessionStatus
from previews.provisioners.local import LocalProvisioner
from previews.sandbox import available, processes_of
from previews.services import Upload, preview_revoke, previews_sweep
from tests.catalog.factories import TEST_ACTOR
from tests.previews.factories import INDEX, SERVER_COMMAND, add_material, previewable_sku
from tests.support.worker import wait_until

REASON = available()
pytestmark = [
    pytest.mark.skipif(REASON is not None, reason=REASON or ""),
    pytest.mark.django_db(transaction=True),
]
MiB = 1024 * 1024
MEMORY = 128 * MiB
PROCESSES = 32
TMPFS = 4 * MiB

PROBE_SERVER = r'''
import errno
import http.server
import json
import os
import signal
import socket
import socketserver
import time
import urllib.parse

MiB = 1024 * 1024


def failure(exc):
    return errno.errorcode.get(exc.errno, type(exc).__name__) if exc.errno else type(exc).__name__


def connect(host, port):
    try:
        socket.create_connection((host, port), timeout=1).close()
        return "connected"
    except OSError as exc:
        return failure(exc)


def send_udp(host, port):
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(b"\0", (host, port))
        return "sent"
    except OSError as exc:
        return failure(exc)


def look(path):
    try:
        os.stat(path)
    except OSError as exc:
        return failure(exc)
    try:
        with open(path, "rb") as f:
            f.read(1)
        return "read"
    except IsADirectoryError:
        return "exists"
    except OSError as exc:
        return failure(exc)


def write(path, size):
    try:
        with open(path, "wb") as f:
            f.write(b"x" * size)
        return "written"
    except OSError as exc:
        return failure(exc)
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


WRITE_PATHS = ["/x", "/dev/x", "/dev/shm/x", "/run/x", "/preview/x", "/run/preview/x", "/usr/x"]


def fill_tmp():
    """Writes 512 KiB files to /tmp until it refuses; answers how much it took and why not more."""
    written = 0
    try:
        while True:
            with open(f"/tmp/fill-{written}", "wb") as f:
                f.write(b"x" * (512 * 1024))
            written += 1
    except OSError as exc:
        refused = failure(exc)
    for i in range(written + 1):
        try:
            os.unlink(f"/tmp/fill-{i}")
        except OSError:
            pass
    return {"kib": written * 512, "refused": refused}


def processes():
    found = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    found[pid] = f.read().replace(b"\0", b" ").decode().strip()
            except OSError:
                pass
    return found


def fork_bomb():
    """Forks without end for a second, every child forking too; answers the most processes
    seen at once in the sandbox, and how many remain once the bomb's group is killed."""
    leader = os.fork()
    if leader == 0:
        os.setsid()
        stop = time.monotonic() + 1.0
        while time.monotonic() < stop:
            try:
                os.fork()
            except OSError:
                time.sleep(0.005)
        time.sleep(3)
        os._exit(0)
    peak = 0
    stop = time.monotonic() + 1.2
    while time.monotonic() < stop:
        peak = max(peak, len(processes()))
        time.sleep(0.02)
    os.killpg(leader, signal.SIGKILL)
    os.waitpid(leader, 0)
    stop = time.monotonic() + 3
    while len(processes()) > 2 and time.monotonic() < stop:  # the sandbox's init reaps them
        time.sleep(0.02)
    return {"peak": peak, "after": len(processes())}


def memory_hog():
    hoard = []
    try:
        while True:
            hoard.append(bytearray(16 * MiB))
    except MemoryError:
        held = len(hoard) * 16
    hoard.clear()
    try:
        bytearray(1 << 30)
        big = "allocated"
    except MemoryError:
        big = "MemoryError"
    return {"held_mib": held, "one_gib": big}


class Handler(http.server.BaseHTTPRequestHandler):
    def address_string(self):
        return "preview-socket"

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        route = url.path
        if route == "/network":
            body = {
                "interfaces": [name for _, name in socket.if_nameindex()],
                "tcp 127.0.0.1:5432": connect("127.0.0.1", 5432),
                "tcp 127.0.0.1 host port": connect("127.0.0.1", int(query["port"][0])),
                "tcp 8.8.8.8:53": connect("8.8.8.8", 53),
                "udp 8.8.8.8:53": send_udp("8.8.8.8", 53),
            }
        elif route == "/files":
            body = {path: look(path) for path in query.get("path", [])}
        elif route == "/listing":
            body = sorted(os.listdir(query["path"][0]))
        elif route == "/writes":
            body = {path: write(path, 1) for path in WRITE_PATHS}
            body["/tmp"] = fill_tmp()
        elif route == "/who":
            body = {"uid": os.getuid(), "environ": sorted(os.environ), "processes": processes()}
        elif route == "/fork-bomb":
            body = fork_bomb()
        elif route == "/memory-hog":
            body = memory_hog()
        elif route == "/exit":
            body = {"exiting": True}
        else:
            body = {"hello": "from the probe"}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()
        if route == "/exit":
            os._exit(3)


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def main():
    # The socket the platform listens on, inherited (socket activation).
    server = Server("", Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = socket.socket(fileno=int(os.environ["PREVIEW_LISTEN_FD"]))
    server.serve_forever()


main()
'''


@pytest.fixture
def limits(settings: Any) -> None:
    """The sandboxes' limits, small; listed before `celery_worker`, which is told them."""
    settings.PREVIEW_SANDBOX_MEMORY_BYTES = MEMORY
    settings.PREVIEW_SANDBOX_PROCESSES = PROCESSES
    settings.PREVIEW_SANDBOX_TMPFS_BYTES = TMPFS


def open_probe(buyer_client: Any, worker: Any) -> tuple[PreviewSession, str]:
    sku = previewable_sku()
    add_material(
        sku,
        uploads=[Upload("index.html", _bytes(INDEX)), Upload("server.py", _bytes(PROBE_SERVER))],
        command=SERVER_COMMAND,
    )
    answer = buyer_client.post(f"/api/v1/skus/{sku.slug}/previews", HTTP_PREFER="wait=5")
    assert answer.status_code == 201, answer.content
    body = answer.json()
    assert body["status"] == SessionStatus.READY, worker.log()[-3000:]
    return PreviewSession.objects.get(pk=body["id"]), body["token"]


def _bytes(content: str | bytes) -> io.BytesIO:
    return io.BytesIO(content.encode() if isinstance(content, str) else content)


def probe(client: Any, token: str, route: str, **query: Any) -> Any:
    """What the server inside answered to GET `route`, through the platform's proxy."""
    answer = client.get(f"/previews/{token}{route}", query)
    assert answer.status_code == 200, answer.content
    return json.loads(b"".join(answer.streaming_content))


def test_from_inside_its_sandbox_a_preview_reaches_no_address_no_host_file_and_writes_only_tmp(
    limits, celery_worker, buyer_client, client, settings
):
    session, token = open_probe(buyer_client, celery_worker)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        host_port = listener.getsockname()[1]

        network = probe(client, token, "/network", port=host_port)

    # The sandbox has a loopback of its own, with nothing listening: not the host's, where
    # this test listens (and the platform's PostgreSQL and Redis may); no route anywhere else.
    assert network == {
        "interfaces": ["lo"],
        "tcp 127.0.0.1:5432": "ECONNREFUSED",
        "tcp 127.0.0.1 host port": "ECONNREFUSED",
        "tcp 8.8.8.8:53": "ENETUNREACH",
        "udp 8.8.8.8:53": "ENETUNREACH",
    }

    preview_dir = settings.PREVIEW_DIR
    host_paths = [
        "/etc/shadow",
        "/etc/passwd",
        "/root",
        "/home",
        "/var/run/postgresql",
        str(settings.BASE_DIR / "manage.py"),
        str(settings.DATA_DIR),
        settings.STORAGES["default"]["OPTIONS"]["location"],
        str(preview_dir),
        str(preview_dir / "material"),
        str(preview_dir / "sockets"),
    ]
    assert probe(client, token, "/files", path=host_paths) == dict.fromkeys(host_paths, "ENOENT")
    # /tmp, above the preview folder on the host, is the sandbox's own tmpfs.
    assert preview_dir.parent == settings.DATA_DIR.parent
    assert probe(client, token, "/listing", path=str(preview_dir.parent)) == []
    assert probe(client, token, "/files", path=["/preview/index.html"]) == {
        "/preview/index.html": "read"
    }

    writes = probe(client, token, "/writes")
    assert writes == {
        "/x": "EROFS",
        "/dev/x": "EROFS",
        "/dev/shm/x": "EROFS",  # noqa: S108 - inside the sandbox
        "/run/x": "ENOENT",  # no /run at all (nothing is bound there)
        "/preview/x": "EROFS",
        # No host folder is bound: the listening socket is inherited, not made here.
        "/run/preview/x": "ENOENT",
        "/usr/x": "EROFS",
        "/tmp": writes["/tmp"],  # noqa: S108 - the sandbox's own tmpfs, below
    }
    # /tmp takes files up to its size (less what its own bookkeeping takes), then no more.
    assert writes["/tmp"]["refused"] == "ENOSPC"  # noqa: S108
    assert TMPFS // 1024 - 512 <= writes["/tmp"]["kib"] <= TMPFS // 1024  # noqa: S108

    who = probe(client, token, "/who")
    assert who["uid"] == 65534
    # Nothing of the worker's environment (its database URL, its secret key) is inside.
    assert who["environ"] == [
        "HOME",
        "LC_CTYPE",
        "LISTEN_FDS",
        "PATH",
        "PREVIEW_LISTEN_FD",
        "PREVIEW_SANDBOX",
        "PREVIEW_SANDBOX_EXPIRES",
        "PWD",
    ]
    # Its own processes only: bwrap's init and the server, no worker, no database.
    assert sorted(who["processes"]) == ["1", "2"]
    assert who["processes"]["2"] == "/usr/bin/python3 -I -B server.py"
    assert LocalProvisioner().alive(session.environment_id) is True


def test_a_fork_bomb_and_a_memory_hog_are_contained_and_a_server_that_dies_is_failed(
    limits, celery_worker, buyer_client, client
):
    session, token = open_probe(buyer_client, celery_worker)

    bomb = probe(client, token, "/fork-bomb")

    # RLIMIT_NPROC counts the sandbox's host uid: its bwraps, the server's threads and the bomb.
    assert PROCESSES // 2 < bomb["peak"] <= PROCESSES
    assert bomb["after"] == 2
    assert subprocess.run(["/usr/bin/true"], check=False).returncode == 0  # the host forks

    hog = probe(client, token, "/memory-hog")

    assert 0 < hog["held_mib"] < MEMORY // MiB
    assert hog["one_gib"] == "MemoryError"
    assert len(bytearray(256 * MiB)) == 256 * MiB  # the host allocates
    assert celery_worker.process.poll() is None
    assert probe(client, token, "/") == {"hello": "from the probe"}  # the server lives on

    # A server that dies (here it exits; the OOM killer would do the same to it).
    assert probe(client, token, "/exit") == {"exiting": True}
    wait_until(lambda: LocalProvisioner().alive(session.environment_id) is False, timeout=5)
    assert client.get(f"/previews/{token}/").status_code == 503

    result = previews_sweep()

    assert result.exited == 1
    session.refresh_from_db()
    assert (session.status, session.end_reason, session.end_detail) == (
        SessionStatus.TORN_DOWN,
        EndReason.FAILED,
        "its sandbox stopped",
    )
    answer = client.get(f"/previews/{token}/")
    assert (answer.status_code, answer.json()["reason"]) == (410, "failed")
    assert processes_of(session.environment_id) == []


def test_a_revoked_token_is_410_at_once(limits, celery_worker, buyer_client, client):
    session, token = open_probe(buyer_client, celery_worker)
    assert probe(client, token, "/") == {"hello": "from the probe"}

    preview_revoke(session_id=session.pk, reason="breakout suspected", actor=TEST_ACTOR)

    # The very next request, whether or not the worker has torn the sandbox down yet.
    answer = client.get(f"/previews/{token}/")
    assert answer.status_code == 410
    assert (answer.json()["code"], answer.json()["reason"]) == ("preview-gone", "revoked")
    assert client.get(f"/previews/{token}/network", {"port": 1}).status_code == 410
    wait_until(
        lambda: PreviewSession.objects.get(pk=session.pk).status == SessionStatus.TORN_DOWN,
        worker=celery_worker,
    )
    assert processes_of(session.environment_id) == []
    assert not (LocalProvisioner().socket_root / session.environment_id).exists()
