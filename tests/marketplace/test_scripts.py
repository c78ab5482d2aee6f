"""scripts/manage and scripts/demo as a newcomer runs them.

The demo runs for real, twice on one data folder, each time on a port of its own: it serves,
its printed buy command makes an order whose checkout link is on that run's port, and Ctrl-C
(SIGINT to its process group, as a terminal sends it) stops web, worker and beat within
seconds, quietly. A temporary data folder and no MARKETPLACE_* variable from the test run: it
touches none of the services the suite may share (PostgreSQL, Redis).
"""

import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.net import free_port

REPO = Path(__file__).resolve().parent.parent.parent
# scripts/lib/procfile.py waits this long before SIGKILL (its STOP_SECONDS); a clean stop
# takes well under it.
STOP_WITHIN_SECONDS = 20


def _clean_env(**env: str) -> dict[str, str]:
    # Not the suite's own settings nor its services: what a newcomer's shell would have.
    inherited = ("DJANGO_SETTINGS_MODULE", "DJANGO_ALLOW_ASYNC_UNSAFE", "PROMETHEUS_MULTIPROC_DIR")
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MARKETPLACE_") and k not in inherited
    }
    return {**clean, **env}


def test_scripts_manage_runs_a_command_from_any_folder(tmp_path):
    result = subprocess.run(
        [
            str(REPO / "scripts" / "manage"),
            "shell",
            "-v",
            "0",
            "-c",
            "import os; print(os.getcwd())",
        ],
        cwd=tmp_path,
        env=_clean_env(MARKETPLACE_DATA_DIR=str(tmp_path / "data")),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    # In the caller's folder, so that a relative path given to a command means what it meant.
    assert result.stdout.strip() == str(tmp_path)


@dataclass
class DemoRun:
    port: int
    output: str
    after_ctrl_c: str
    returncode: int
    stop_seconds: float
    order: dict
    replayed: dict

    def printed(self, pattern: str) -> str:
        match = re.search(pattern, self.output)
        assert match, f"{pattern!r} not in the demo's output:\n{self.output}"
        return match.group(1)


def _post_json(url: str, body: dict, headers: dict[str, str]) -> dict:
    request = urllib.request.Request(  # noqa: S310 - the demo on loopback
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **headers},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return json.loads(response.read())


def _demo(data_dir: Path) -> DemoRun:
    port = free_port()
    process = subprocess.Popen(
        [str(REPO / "scripts" / "demo")],
        cwd=REPO,
        env=_clean_env(MARKETPLACE_DATA_DIR=str(data_dir), MARKETPLACE_PORT=str(port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert process.poll() is None, "the demo stopped:\n" + "".join(lines)
            assert time.monotonic() < deadline, "the demo did not serve:\n" + "".join(lines)
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2):  # noqa: S310
                    break
            except urllib.error.HTTPError:
                break  # it answers
            except OSError:
                time.sleep(0.5)
        # Ctrl-C once the worker and beat are up too: stopping a running worker is what used
        # to kill its pool processes and end in SIGKILL.
        while not (
            re.search(r"celery@\S+ ready\.", output := "".join(lines))
            and "beat: Starting" in output
        ):
            assert process.poll() is None, "the demo stopped:\n" + output
            assert time.monotonic() < deadline, "the worker or beat did not start:\n" + output
            time.sleep(0.5)

        token = re.search(r"buyer token +(\S+)", output).group(1)
        key = re.search(r"Idempotency-Key: (\S+)\"", output).group(1)
        sku = re.search(r"""'\{"sku": "([^"]+)"\}'""", output).group(1)
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
        order = _post_json(f"{base}/api/v1/checkout", {"sku": sku}, headers)
        replayed = _post_json(f"{base}/api/v1/checkout", {"sku": sku}, headers)

        mark = len(lines)
        os.killpg(process.pid, signal.SIGINT)
        started = time.monotonic()
        returncode = process.wait(timeout=STOP_WITHIN_SECONDS + 10)
        stop_seconds = time.monotonic() - started
        reader.join(timeout=10)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return DemoRun(
        port=port,
        output="".join(lines),
        after_ctrl_c="".join(lines[mark:]),
        returncode=returncode,
        stop_seconds=stop_seconds,
        order=order,
        replayed=replayed,
    )


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory) -> tuple[DemoRun, DemoRun]:
    data_dir = tmp_path_factory.mktemp("demo")
    return _demo(data_dir), _demo(data_dir)


pytestmark = [
    # It runs a real Celery worker (and gunicorn and beat), twice: about a minute.
    pytest.mark.worker,
    pytest.mark.timeout(600),
]


def test_ctrl_c_stops_the_demo_quietly_within_seconds(demo_runs):
    for run in demo_runs:
        assert run.returncode == 130, run.after_ctrl_c
        assert run.stop_seconds < STOP_WITHIN_SECONDS, run.after_ctrl_c
        assert "Traceback" not in run.output, run.output
        # No process killed (SIGKILL) nor dying of the SIGTERM meant for its parent.
        assert "SIGKILL" not in run.after_ctrl_c, run.after_ctrl_c
        assert "ERROR" not in run.after_ctrl_c, run.after_ctrl_c
        for name in ("web", "worker", "beat"):
            assert f"{name} stopped (rc=0)" in run.after_ctrl_c, run.after_ctrl_c


def test_a_second_run_keeps_the_staff_password(demo_runs):
    first, second = demo_runs
    password = r"Staff account: admin@marketplace\.test / (\S+)"

    assert first.printed(password) == second.printed(password)


def test_each_run_prints_a_buy_command_that_makes_a_new_order_on_its_own_port(demo_runs):
    key = r"Idempotency-Key: (\S+)\""
    first, second = demo_runs

    assert first.printed(key) != second.printed(key)
    assert first.order["order"]["id"] != second.order["order"]["id"]
    for run in demo_runs:
        assert run.order["checkout_url"].startswith(
            f"http://127.0.0.1:{run.port}/marketplace/local-checkout/"
        )
        # Sent again as printed, the command replays its order, as the demo says it does.
        assert run.replayed["order"]["id"] == run.order["order"]["id"]
        assert "The same command sent again answers with the same order" in run.output
