"""The API contract, checked against a live server (scripts/contract; docs/testing.md).

Starts the platform as a newcomer's demo does, on the embedded defaults (SQLite, local files,
the local-memory cache, the file-system broker) in a temporary data folder of its own and on a
free loopback port, with the demo data and a buyer's API token, and with rate limits high
enough that the run measures the contract rather than the limits. Then schemathesis runs all
its checks against /api/schema/ for a bounded time, and every finding it reports must be
listed, with its reason, in the allow list (.ci/schemathesis-allow.txt); anything else fails.
"""

import argparse
import base64
import http.cookiejar
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv" / "bin" / "python"
ALLOW_LIST = ROOT / ".ci" / "schemathesis-allow.txt"
BUYER = "contract-buyer@marketplace.test"
SETTINGS = ROOT / "config" / "settings" / "base.py"


def high_limits() -> dict[str, str]:
    """Every rate limit the settings read, far above what one run sends: the run comes from
    one address and one buyer, and a 429 would hide the answer under test."""
    names = re.findall(r'"(MARKETPLACE_THROTTLE_[A-Z_]+)"', SETTINGS.read_text(encoding="utf-8"))
    return dict.fromkeys(names, "1000000/min")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(data_dir: Path, port: int) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        # The embedded defaults, whatever the calling shell points at (CI sets PostgreSQL and
        # Redis for the test suite).
        if not name.startswith("MARKETPLACE_") and name != "DJANGO_SETTINGS_MODULE"
    }
    env.update(
        MARKETPLACE_SERVICE_ENV="dev",
        MARKETPLACE_DATA_DIR=str(data_dir),
        MARKETPLACE_PORT=str(port),
        **high_limits(),
    )
    return env


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(  # noqa: S603 - the platform's own manage.py
        [str(PYTHON), str(ROOT / "manage.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"manage.py {args[0]} failed ({done.returncode})")
    return done.stdout


def wait_until_up(base_url: str, server: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server stopped at start ({server.returncode})")
        try:
            with urllib.request.urlopen(f"{base_url}/health/live", timeout=2):  # noqa: S310
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"the server did not answer on {base_url} within {seconds:.0f} s")


def _call(
    opener: urllib.request.OpenerDirector,
    url: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, headers=headers or {})  # noqa: S310
    try:
        with opener.open(request, timeout=30) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def order_delivered(env: dict[str, str], base_url: str, token: str, data_dir: Path) -> Any:
    """A buyer's order paid on the local gateway's page and delivered by a worker, as a buyer
    of the demo would: its ids let the run reach the license, delivery and proof answers."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    bearer = {"Authorization": f"Bearer {token}"}
    status, skus = _call(opener, f"{base_url}/api/v1/skus?page_size=100", headers=bearer)
    if status != 200 or not skus["results"]:
        raise SystemExit(f"no SKU on sale to buy ({status})")
    slugs = [sku["slug"] for sku in skus["results"]]
    status, order = _call(
        opener,
        f"{base_url}/api/v1/checkout",
        body=json.dumps({"sku": slugs[0]}).encode(),
        headers={**bearer, "Content-Type": "application/json", "Idempotency-Key": "contract"},
    )
    if status != 201:
        raise SystemExit(f"checkout answered {status}: {order}")
    page = order["checkout_url"]
    _call(opener, page)  # sets the CSRF cookie the page's buttons send back
    csrf = next(cookie.value for cookie in jar if cookie.name == "csrftoken")
    status, signed = _call(
        opener,
        f"{page}/event",
        body=json.dumps({"outcome": "pay"}).encode(),
        headers={"Content-Type": "application/json", "X-CSRFToken": csrf, "Referer": page},
    )
    if status != 200:
        raise SystemExit(f"the local gateway's Pay answered {status}: {signed}")
    status, answer = _call(
        opener,
        f"{base_url}/marketplace/stripe/webhook",
        body=signed["payload"].encode(),
        headers={"Content-Type": "application/json", "Stripe-Signature": signed["signature"]},
    )
    if status != 200:
        raise SystemExit(f"the webhook answered {status}: {answer}")

    worker = subprocess.Popen(  # noqa: S603 - the platform's own worker
        [str(ROOT / ".venv" / "bin" / "celery"), "-A", "config", "worker", "--pool", "solo"],
        cwd=ROOT,
        env=env,
        stdout=(data_dir / "worker.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        order_url = f"{base_url}/api/v1/orders/{order['order']['id']}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status, delivery = _call(opener, f"{order_url}/delivery", headers=bearer)
            if status == 200 and delivery.get("proof"):
                return {"order": order["order"]["id"], "proof": delivery["proof"], "skus": slugs}
            time.sleep(1)
        raise SystemExit(f"the order was not delivered within 120 s ({status}: {delivery})")
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def run_config(data_dir: Path, real: dict[str, Any]) -> Path:
    """.ci/schemathesis.toml, and the real ids and slugs of this run: drawn half of the time
    for the parameters that name them, so that the answers behind the 404s are tested too."""
    config = data_dir / "schemathesis.toml"
    dictionaries = {
        "order_ids": [real["order"]],
        "proof_ids": [real["proof"]],
        "sku_slugs": real["skus"],
    }
    bindings = {
        "path.order_id": "order_ids",
        "path.proof_id": "proof_ids",
        "path.slug": "sku_slugs",
        "body.sku": "sku_slugs",
    }
    lines = [(ROOT / ".ci" / "schemathesis.toml").read_text(encoding="utf-8"), ""]
    for name, values in dictionaries.items():
        lines += [f"[dictionaries.{name}]", f"values = {json.dumps(values)}", ""]
    lines.append("[parameters]")
    for key, name in bindings.items():
        lines.append(f'"{key}" = {{ dictionary = "{name}", probability = 0.5 }}')
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return config


@dataclass(frozen=True)
class Allowed:
    check: str
    operation: str
    # Only failures whose answer is a problem naming these fields or parameters in `errors`
    # (all of them among these), or with this `code`; neither: any failure of the check on
    # the operation.
    fields: frozenset[str] | None
    code: str | None
    reason: str

    def covers(self, finding: "Finding") -> bool:
        if (self.check, self.operation) != (finding.check, finding.operation):
            return False
        if self.code is not None:
            return finding.code == self.code
        if self.fields is not None:
            return bool(finding.fields) and finding.fields <= self.fields
        return True


@dataclass(frozen=True)
class Finding:
    check: str
    operation: str
    title: str
    fields: frozenset[str]
    code: str | None


def read_allow_list(path: Path) -> list[Allowed]:
    """`check  METHOD /path  [errors=a,b | code=c]  reason` per line; `#` starts a comment."""
    allowed: list[Allowed] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(None, 3)
        fields = code = None
        if len(parts) == 4 and parts[3].startswith(("errors=", "code=")):
            condition, _, rest = parts[3].partition(" ")
            if condition.startswith("code="):
                code = condition.removeprefix("code=")
            else:
                fields = frozenset(condition.removeprefix("errors=").split(","))
            parts[3] = rest.strip()
        if len(parts) < 4 or not parts[3]:
            raise SystemExit(
                f"{path}:{number}: want `check METHOD /path [errors=...|code=...] reason`"
            )
        check, method, op_path, reason = parts
        allowed.append(Allowed(check, f"{method.upper()} {op_path}", fields, code, reason))
    return allowed


def _problem_of(interaction: dict[str, Any] | None) -> tuple[frozenset[str], str | None]:
    """The fields named in the answer's `errors`, and its `code`, when it is a problem."""
    response = (interaction or {}).get("response") or {}
    content = response.get("content") or {}
    try:
        body = json.loads(base64.b64decode(content.get("$base64", "")) or b"null")
    except ValueError:
        return frozenset(), None
    if not isinstance(body, dict):
        return frozenset(), None
    errors = body.get("errors")
    code = body.get("code")
    return (
        frozenset(errors) if isinstance(errors, dict) else frozenset(),
        code if isinstance(code, str) else None,
    )


def errors_of(report: Path) -> list[str]:
    """What schemathesis could not test (an error of its own or of the schema)."""
    errors = []
    for line in report.read_text(encoding="utf-8").splitlines():
        event = json.loads(line) if line.strip() else {}
        for kind, body in event.items():
            if "Error" in kind:
                errors.append(f"{kind}: {json.dumps(body)[:300]}")
    return errors


def findings_of(report: Path) -> list[Finding]:
    """Each distinct failure in schemathesis's NDJSON event stream."""
    found: set[Finding] = set()
    for line in report.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        body = json.loads(line).get("ScenarioFinished")
        if not isinstance(body, dict):
            continue
        recorder = body.get("recorder") or {}
        interactions = recorder.get("interactions") or {}
        for case_id, checks in (recorder.get("checks") or {}).items():
            for check in checks:
                if str(check.get("status")).lower() != "failure":
                    continue
                failure = (check.get("failure_info") or {}).get("failure") or {}
                fields, code = _problem_of(interactions.get(case_id))
                found.add(
                    Finding(
                        check=check["name"],
                        operation=failure.get("operation") or recorder.get("label") or "",
                        title=f"{failure.get('code', '')} {failure.get('title', '')}".strip(),
                        fields=fields,
                        code=code,
                    )
                )
    return sorted(found, key=lambda f: (f.operation, f.check, sorted(f.fields)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--max-time",
        type=int,
        default=100,
        help="schemathesis's budget in seconds (with the setup, CI's step takes under 3 minutes)",
    )
    parser.add_argument("--max-examples", type=int, default=40, help="cases per operation")
    parser.add_argument("--seed", type=int, default=None, help="repeat a run (printed)")
    parser.add_argument("--keep", action="store_true", help="keep the data folder and report")
    parser.add_argument("extra", nargs="*", help="more schemathesis options, after --")
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="marketplace-contract-"))
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = server_env(data_dir, port)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    server: subprocess.Popen[bytes] | None = None
    try:
        print(f"Contract server: {base_url}, data in {data_dir}", flush=True)
        manage(env, "migrate", "--noinput", "--verbosity", "0")
        manage(env, "load_demo_data", "--verbosity", "0")
        token = manage(env, "issue_api_token", BUYER, "--name", "contract").strip()
        server = subprocess.Popen(  # noqa: S603 - the platform's own server
            [
                str(ROOT / ".venv" / "bin" / "gunicorn"),
                "config.wsgi",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "1",
                "--threads",
                "4",
                "--no-control-socket",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
            stdout=(data_dir / "server.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        wait_until_up(base_url, server, 60)
        real = order_delivered(env, base_url, token, data_dir)
        print(f"Delivered order {real['order']} (proof {real['proof']})", flush=True)

        report = data_dir / "events.ndjson"
        command = [
            str(ROOT / ".venv" / "bin" / "schemathesis"),
            "--config-file",
            str(run_config(data_dir, real)),
            "run",
            f"{base_url}/api/schema/?format=json",
            "--url",
            base_url,
            "--checks",
            "all",
            "--max-time",
            str(args.max_time),
            "--max-examples",
            str(args.max_examples),
            "--seed",
            str(seed),
            # One worker: Hypothesis's source inspection is not thread-safe on Python 3.11
            # (SystemError "AST constructor recursion depth mismatch" with two).
            "--workers",
            "1",
            "--header",
            f"Authorization: Bearer {token}",
            "--report",
            "ndjson",
            "--report-ndjson-path",
            str(report),
            "--output-sanitize",
            "true",
            *args.extra,
        ]
        print(f"schemathesis --seed {seed} (scripts/contract --seed {seed} repeats it)", flush=True)
        ran = subprocess.run(command, cwd=data_dir, check=False)  # noqa: S603
        if not report.exists():
            print(f"schemathesis wrote no report (exit {ran.returncode})")
            return 1

        allowed = read_allow_list(ALLOW_LIST)
        findings = findings_of(report)
        unlisted = []
        print(f"\n{len(findings)} finding(s):")
        for finding in findings:
            entry = next((entry for entry in allowed if entry.covers(finding)), None)
            if entry is None:
                unlisted.append(finding)
            fields = f" errors={','.join(sorted(finding.fields))}" if finding.fields else ""
            fields += f" code={finding.code}" if finding.code else ""
            verdict = f"allowed: {entry.reason}" if entry else "NOT ALLOWED"
            print(f"  {finding.check}  {finding.operation}{fields}  ({finding.title}): {verdict}")
        if unlisted:
            print(
                f"\nThe API contract failed: {len(unlisted)} finding(s) are not in "
                f"{ALLOW_LIST.relative_to(ROOT)}. Fix the server or the document, or list the "
                "finding there with its reason."
            )
            return 1
        # A run that could not test an operation is not a pass.
        errors = errors_of(report)
        if errors or (ran.returncode != 0 and not findings):
            print(f"\nschemathesis could not test everything (exit {ran.returncode}):")
            for error in errors:
                print(f"  {error}")
            return 1
        print("The API contract holds.")
        return 0
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
        if args.keep:
            print(f"Kept {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
