"""Real bubblewrap sandboxes: what the preview command can and cannot reach or spend."""

import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from previews.sandbox import (
    DEMO_SERVER,
    Sandbox,
    SandboxSpec,
    available,
    bwrap_argv,
    demo_command,
    kill_sandbox,
    processes_of,
    sandboxes_running,
    unix_http_get,
)

REASON = available()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")
REPO = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024


def make_spec(tmp_path: Path, command: list[str], **limits) -> SandboxSpec:
    material = tmp_path / "material"
    material.mkdir(exist_ok=True)
    (material / "index.html").write_text("<h1>preview</h1>")
    socket_dir = tmp_path / "socket"
    socket_dir.mkdir(exist_ok=True)
    defaults = {"memory_bytes": 256 * MiB, "max_processes": 32, "cpu_seconds": 10}
    defaults |= {"tmpfs_bytes": 4 * MiB, "ttl_seconds": 30}
    return SandboxSpec(
        material_dir=material, command=command, socket_dir=socket_dir, **(defaults | limits)
    )


def run_probe(tmp_path: Path, code: str, timeout: float = 5, **limits) -> tuple[int, str]:
    """Run Python ``code`` in a sandbox; its exit status and what it printed."""
    command = ["/usr/bin/python3", "-I", "-B", "-c", textwrap.dedent(code)]
    sandbox = Sandbox.start(make_spec(tmp_path, command, **limits), stdout=subprocess.PIPE)
    try:
        out, _ = sandbox.process.communicate(timeout=timeout)
    finally:
        sandbox.stop()
    return sandbox.process.returncode, out.decode()


def wait_until(predicate, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def tmp_path():
    """A world-traversable (0711) folder: the sandbox's host uid must reach the folders it binds,
    and pytest's own tmp_path sits below a 0700 folder of root's."""
    path = Path(tempfile.mkdtemp(prefix="preview-sandbox-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def demo(tmp_path):
    sandbox = Sandbox.start(make_spec(tmp_path, demo_command(), programs=(DEMO_SERVER,)))
    yield sandbox
    sandbox.stop()


def test_argv_binds_only_system_directories_read_only_and_hands_over_the_socket(tmp_path):
    argv = bwrap_argv(
        make_spec(tmp_path, ["true"]),
        sandbox_id="x",
        expires_at=0,
        fds={"/preview": 3},
        listen_fd=4,
    )

    binds = [argv[i + 1] for i, arg in enumerate(argv) if arg in ("--ro-bind", "--bind")]
    assert set(binds) <= {"/usr", "/lib64", "/bin", "/lib", "/sbin"}
    assert argv[argv.index("--ro-bind-fd") + 1 : argv.index("--ro-bind-fd") + 3] == [
        "3",
        "/preview",
    ]
    # No host folder is bound writable: the command inherits the socket the platform listens on.
    assert "--bind-fd" not in argv
    assert "--bind" not in argv
    assert argv[argv.index("PREVIEW_LISTEN_FD") + 1] == "4"
    assert argv[argv.index("--tmpfs") - 1] == str(4 * MiB)
    for flag in (
        "--unshare-all",
        "--disable-userns",
        "--assert-userns-disabled",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
    ):
        assert flag in argv
    assert "--share-net" not in argv
    assert argv[-2:] == ["--", "true"]


def test_demo_server_answers_over_the_unix_socket(demo):
    assert demo.wait_ready(5)

    assert unix_http_get(demo.spec.socket_path, "/index.html") == (200, b"<h1>preview</h1>")
    assert unix_http_get(demo.spec.socket_path, "/../../etc/passwd")[0] == 404


def test_no_network_at_all(tmp_path):
    # A real listener on the host's loopback: the sandbox's 127.0.0.1 is another one.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        status, out = run_probe(
            tmp_path,
            f"""
            import json, socket
            result = {{"interfaces": [name for _, name in socket.if_nameindex()]}}
            for host, port in [("127.0.0.1", 5432), ("127.0.0.1", {port}), ("1.1.1.1", 53)]:
                try:
                    socket.create_connection((host, port), timeout=1).close()
                    result[f"{{host}}:{{port}}"] = "connected"
                except OSError as exc:
                    result[f"{{host}}:{{port}}"] = type(exc).__name__
            print(json.dumps(result))
            """,
        )

    result = json.loads(out)
    assert status == 0
    assert result.pop("interfaces") == ["lo"]
    assert "connected" not in result.values()
    assert result["1.1.1.1:53"] == "OSError"  # ENETUNREACH: no route at all


def test_no_namespace_of_its_own_can_be_made_inside(tmp_path):
    # A user namespace would give the command root "inside" it and the kernel's whole
    # namespace surface (nf_tables, mounts, keyctl...) to try.
    status, out = run_probe(
        tmp_path,
        """
        import ctypes, json, os
        libc = ctypes.CDLL(None, use_errno=True)
        result = {}
        for name, flag in [("user", 0x10000000), ("net", 0x40000000), ("mount", 0x00020000)]:
            result[name] = "made" if libc.unshare(flag) == 0 else os.strerror(ctypes.get_errno())
        print(json.dumps(result))
        """,
    )

    assert status == 0, out
    assert json.loads(out) == {
        "user": "No space left on device",  # --disable-userns: max_user_namespaces is 0
        "net": "Operation not permitted",
        "mount": "Operation not permitted",
    }


def test_host_secrets_and_the_data_folder_are_absent(tmp_path):
    data = tmp_path / "platform-data"
    data.mkdir()
    (data / "secret").write_text("s3cret")
    os.chmod(data, 0o755)  # noqa: S103 - even world-readable, it is not in the sandbox
    os.chmod(data / "secret", 0o644)

    status, out = run_probe(
        tmp_path,
        f"""
        import json, os, socket
        result = {{"uid": os.getuid(), "hostname": socket.gethostname(), "root": os.listdir("/")}}
        for path in ["/etc/shadow", {str(data / "secret")!r}, "/work/main/manage.py", "/root"]:
            try:
                open(path).read()
                result[path] = "read"
            except OSError as exc:
                result[path] = type(exc).__name__
        print(json.dumps(result))
        """,
    )

    result = json.loads(out)
    assert status == 0
    assert result.pop("uid") == 65534
    assert result.pop("hostname") == "preview"
    assert set(result.pop("root")) <= {"usr", "bin", "lib", "lib64", "sbin", "proc", "dev"} | {
        "tmp", "preview", "run",
    }  # fmt: skip
    assert set(result.values()) == {"FileNotFoundError"}


def test_writes_only_to_the_size_capped_tmpfs(tmp_path):
    status, out = run_probe(
        tmp_path,
        """
        import errno, json
        result = {}
        for path, size in [("/preview/x", 1), ("/usr/x", 1), ("/tmp/small", 1 << 20),
                           ("/tmp/big", 8 << 20)]:
            try:
                with open(path, "wb") as f:
                    f.write(b"x" * size)
                result[path] = "written"
            except OSError as exc:
                result[path] = errno.errorcode[exc.errno]
        print(json.dumps(result))
        """,
        tmpfs_bytes=4 * MiB,
    )

    assert status == 0
    assert json.loads(out) == {
        "/preview/x": "EROFS",
        "/usr/x": "EROFS",
        "/tmp/small": "written",  # noqa: S108 - the sandbox's own tmpfs
        "/tmp/big": "ENOSPC",  # noqa: S108 - the 4 MiB tmpfs fills before RLIMIT_FSIZE's 4 MiB
    }
    assert list((tmp_path / "material").iterdir()) == [tmp_path / "material" / "index.html"]


def test_many_small_files_stop_at_the_tmpfs_size(tmp_path):
    status, out = run_probe(
        tmp_path,
        """
        import errno
        try:
            for i in range(100):
                with open(f"/tmp/{i}", "wb") as f:
                    f.write(b"x" * (512 << 10))
        except OSError as exc:
            print(i, errno.errorcode[exc.errno])
        """,
        tmpfs_bytes=4 * MiB,
    )

    assert status == 0
    count, error = out.split()
    assert (int(count), error) in {(7, "ENOSPC"), (8, "ENOSPC")}


def test_a_memory_hog_is_stopped_and_the_host_is_fine(tmp_path):
    status, out = run_probe(
        tmp_path,
        """
        try:
            hog = bytearray(1 << 30)
            print("allocated")
        except MemoryError:
            print("MemoryError")
        """,
        memory_bytes=128 * MiB,
    )

    assert (status, out.strip()) == (0, "MemoryError")
    assert len(bytearray(256 * MiB)) == 256 * MiB


def test_a_fork_bomb_is_capped_and_the_host_is_fine(tmp_path):
    bomb = ["/usr/bin/python3", "-I", "-B", "-c", textwrap.dedent("""
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """)]  # fmt: skip
    sandbox = Sandbox.start(make_spec(tmp_path, bomb, max_processes=32))
    try:
        peak = 0
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            peak = max(peak, len(processes_of(sandbox.sandbox_id)))
            time.sleep(0.1)
        assert 8 < peak <= 32
        assert subprocess.run(["true"], check=False).returncode == 0
    finally:
        sandbox.stop()
    assert processes_of(sandbox.sandbox_id) == []


def test_a_busy_loop_is_killed_at_its_cpu_seconds(tmp_path):
    started = time.monotonic()
    status, _ = run_probe(tmp_path, "while True: pass", cpu_seconds=1)

    assert status == 128 + signal.SIGXCPU  # bwrap reports the command's signal as 128 + n
    assert time.monotonic() - started < 4


def test_the_sandbox_is_stopped_at_its_ttl(tmp_path):
    sandbox = Sandbox.start(make_spec(tmp_path, ["/usr/bin/sleep", "60"], ttl_seconds=0.5))

    assert wait_until(lambda: not sandbox.alive())
    assert wait_until(lambda: processes_of(sandbox.sandbox_id) == [])


def test_stop_leaves_no_process_and_is_idempotent(demo):
    assert demo.wait_ready(5)
    assert len(processes_of(demo.sandbox_id)) >= 2

    demo.stop()
    demo.stop()

    assert not demo.alive()
    assert processes_of(demo.sandbox_id) == []


def test_a_sandbox_dies_with_its_parent(tmp_path):
    spec = make_spec(tmp_path, demo_command(), programs=(DEMO_SERVER,))
    helper = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import pickle, sys, time; from previews.sandbox import Sandbox; "
            "s = Sandbox.start(pickle.loads(sys.stdin.buffer.read())); "
            "print(s.sandbox_id, s.wait_ready(5), flush=True); time.sleep(60)",
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        helper.stdin.write(pickle.dumps(spec))
        helper.stdin.close()
        sandbox_id, ready = helper.stdout.readline().decode().split()
        assert ready == "True"
        assert len(processes_of(sandbox_id)) >= 2
    finally:
        helper.send_signal(signal.SIGKILL)
        helper.wait()

    assert wait_until(lambda: processes_of(sandbox_id) == [])


def test_sandboxes_running_finds_a_leaked_one_and_kill_sandbox_ends_it(demo):
    assert demo.wait_ready(5)
    assert demo.pid in sandboxes_running()

    kill_sandbox(demo.pid)

    assert wait_until(lambda: processes_of(demo.sandbox_id) == [])
    assert demo.pid not in sandboxes_running()
    with pytest.raises(ValueError, match="not a preview sandbox"):
        kill_sandbox(os.getpid())
