"""Benchmark of delivery: packaging throughput against a floor, and (to come) licenses per second.

    .venv/bin/python -m bench.delivery.run              # from the repository root, about 1 min
    .venv/bin/python -m bench.delivery.run --size-mib 256 --rounds 1   # a quick look

**Packaging.** A 1 GiB artifact of random bytes is written once to a scratch folder (kept between
runs, made again when its size differs) and read from the page cache. Two sides, each in a
process of its own, file to file:

- *ours*: ``licensing.envelope.encrypt_stream`` (default 1 MiB chunks): header, per-chunk
  nonces, the header as associated data, the final-chunk look-ahead, SHA-256 of the artifact and
  of the package, all in one pass;
- *floor*: the same bytes in the same chunks through ``cryptography``'s ``AESGCM.encrypt_into``
  (a counter nonce, no associated data) with hashlib SHA-256 of the plaintext and of the
  ciphertext, written to a file: the work any packager must do, and nothing of the format.

Rounds go ours, floor | floor, ours | ours, floor (so a trend on the machine weighs on both
alike); each side's median counts. Throughput is artifact MiB per second of the timed call
(files opened and closed inside it, interpreter start-up outside). Peak memory is each process's
VmHWM (its peak resident set since exec; ``ru_maxrss`` of a child would inherit its parent's).
After the first round of ours, the package is decrypted with ``decrypt_stream`` and both hashes
are checked against the artifact's and the package's; a mismatch stops the run with exit 1.

Targets (issue 5): ours ≥ 0.7 of the floor; peak RSS < 150 MB; ≥ 2,000 licenses signed per
second. ``--strict`` exits 3 when one is missed. Figures go to ``bench/results/delivery-*.json``.

**Licenses.** :func:`measure_licenses`: licenses issued and signed per second (claims, license
key, canonical JSON, compact JWS with Ed25519) against a floor of bare Ed25519 signatures of the
same inputs.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
RESULTS_DIR = REPO / "bench" / "results"
SCRATCH = Path(tempfile.gettempdir()) / "marketplace-bench-delivery"
MIB = 1024 * 1024

RATIO_TARGET = 0.7
RSS_TARGET_MB = 150
LICENSES_TARGET_PER_SECOND = 2000


# --- the two sides, each run in its own process (--worker) ------------------------------------


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def work_ours(source: Path, target: Path, chunk_size: int) -> dict[str, Any]:
    from licensing.envelope import encrypt_stream

    key = os.urandom(32)
    started = time.perf_counter()
    with source.open("rb") as src, target.open("wb") as dst:
        info = encrypt_stream(
            src, dst, data_key=key, chunk_size=chunk_size, context=b"bench delivery"
        )
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "size": info.size,
        "output_size": info.package_size,
        "plaintext_sha256": info.plaintext_sha256,
        "package_sha256": info.package_sha256,
        "key": key.hex(),
    }


def work_floor(source: Path, target: Path, chunk_size: int) -> dict[str, Any]:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    gcm = AESGCM(os.urandom(32))
    nonce = struct.Struct(">4xQ")
    plain_hash, cipher_hash = hashlib.sha256(), hashlib.sha256()
    inview = memoryview(bytearray(chunk_size))
    outview = memoryview(bytearray(chunk_size + 16))
    size = written = index = 0
    started = time.perf_counter()
    with source.open("rb") as src, target.open("wb") as dst:
        while True:
            count = src.readinto(inview)
            if not count:
                break
            sealed = outview[: count + 16]
            gcm.encrypt_into(nonce.pack(index), inview[:count], None, sealed)
            plain_hash.update(inview[:count])
            cipher_hash.update(sealed)
            dst.write(sealed)
            size += count
            written += len(sealed)
            index += 1
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "size": size,
        "output_size": written,
        "plaintext_sha256": plain_hash.hexdigest(),
        "package_sha256": cipher_hash.hexdigest(),
    }


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker(side: str, source: Path, target: Path, chunk_size: int) -> None:
    import cryptography.hazmat.primitives.ciphers.aead  # noqa: F401 - imported before the clock

    import licensing.envelope  # noqa: F401

    work = work_ours if side == "ours" else work_floor
    cpu = cpu_seconds()
    result = work(source, target, chunk_size)
    result["cpu_seconds"] = cpu_seconds() - cpu
    result["peak_rss_bytes"] = peak_rss_bytes()
    print(json.dumps(result))


def run_side(side: str, source: Path, target: Path, chunk_size: int) -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.delivery.run",
            "--worker",
            side,
            "--input",
            str(source),
            "--output",
            str(target),
            "--chunk-size",
            str(chunk_size),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the {side} worker failed:\n{done.stderr}")
    return json.loads(done.stdout)


# --- packaging ---------------------------------------------------------------------------------


def artifact(size: int, folder: Path) -> tuple[Path, str]:
    """The random artifact of ``size`` bytes (made once) and its SHA-256."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"artifact-{size}.bin"
    digest_path = path.with_suffix(".sha256")
    if path.exists() and path.stat().st_size == size and digest_path.exists():
        return path, digest_path.read_text().strip()
    print(f"writing a {size / MIB:.0f} MiB artifact to {path} ...", flush=True)
    digest = hashlib.sha256()
    with path.open("wb") as out:
        left = size
        while left:
            block = os.urandom(min(left, 4 * MIB))
            digest.update(block)
            out.write(block)
            left -= len(block)
    digest_path.write_text(digest.hexdigest())
    return path, digest.hexdigest()


def warm(path: Path) -> None:
    """Read the artifact once so that every round finds it in the page cache."""
    buffer = memoryview(bytearray(4 * MIB))
    with path.open("rb", buffering=0) as file:
        while file.readinto(buffer):
            pass


def verify_package(package: Path, result: dict[str, Any], artifact_sha256: str) -> float:
    """Decrypt ours' package and check both hashes; the decryption's seconds."""
    from licensing.envelope import decrypt_stream

    class Discard(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            return len(data)

    started = time.perf_counter()
    with package.open("rb") as src:
        info = decrypt_stream(
            src, Discard(), data_key=bytes.fromhex(result["key"]), context=b"bench delivery"
        )
    seconds = time.perf_counter() - started
    if info.plaintext_sha256 != artifact_sha256 or result["plaintext_sha256"] != artifact_sha256:
        raise SystemExit("check failed: the package does not decrypt to the artifact")
    if info.package_sha256 != result["package_sha256"]:
        raise SystemExit("check failed: the package hash differs from what encrypt_stream said")
    if package.stat().st_size != result["output_size"]:
        raise SystemExit("check failed: the package size differs from what encrypt_stream said")
    return seconds


def packaging(options: argparse.Namespace) -> dict[str, Any]:
    size = options.size_mib * MIB
    source, sha = artifact(size, options.dir)
    warm(source)
    target = options.dir / "package.out"
    order = [
        side
        for round_ in range(options.rounds)
        for side in (("ours", "floor") if round_ % 2 == 0 else ("floor", "ours"))
    ]
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "floor": []}
    verify_seconds = None
    try:
        for side in order:
            result = run_side(side, source, target, options.chunk_size)
            if result["size"] != size or result["plaintext_sha256"] != sha:
                raise SystemExit(f"check failed: {side} did not read the whole artifact")
            if side == "ours" and verify_seconds is None:
                verify_seconds = verify_package(target, result, sha)
            result.pop("key", None)
            runs[side].append(result)
            print(
                f"  {side:5}  {size / MIB / result['seconds']:8.1f} MiB/s  "
                f"{result['seconds']:6.2f} s  CPU {result['cpu_seconds']:6.2f} s  "
                f"peak {result['peak_rss_bytes'] / MIB:6.1f} MiB",
                flush=True,
            )
            # Deleting it drops its dirty pages, so no round pays for an earlier one's writeback.
            target.unlink()
    finally:
        target.unlink(missing_ok=True)
    summary: dict[str, Any] = {"size": size, "chunk_size": options.chunk_size, "rounds": runs}
    for side in ("ours", "floor"):
        seconds = statistics.median(r["seconds"] for r in runs[side])
        cpu = statistics.median(r["cpu_seconds"] for r in runs[side])
        summary[side] = {
            "mib_per_second": size / MIB / seconds,
            "seconds": seconds,
            "cpu_seconds": cpu,
            "mib_per_cpu_second": size / MIB / cpu,
            "peak_rss_mib": max(r["peak_rss_bytes"] for r in runs[side]) / MIB,
            "peak_rss_mb": max(r["peak_rss_bytes"] for r in runs[side]) / 1e6,
        }
    summary["ratio"] = summary["ours"]["mib_per_second"] / summary["floor"]["mib_per_second"]
    summary["cpu_ratio"] = (
        summary["ours"]["mib_per_cpu_second"] / summary["floor"]["mib_per_cpu_second"]
    )
    summary["decrypt_mib_per_second"] = size / MIB / verify_seconds if verify_seconds else None
    return summary


# --- licenses issued and signed per second: HOOK for the licensing service --------------------


def measure_licenses(options: argparse.Namespace) -> dict[str, Any] | None:
    """Licenses issued and signed per second, in a child process with Django set up.

    Ours: what `licensing.services.licenses` does per license before the database write: the
    claims from the order, the license key, canonical JSON and a compact JWS signed with Ed25519
    (the local key store's algorithm). Floor: Ed25519 signatures of the same signing inputs,
    nothing else. Storing a license is one row and one audit event in a transaction; the audit
    chain serialises those on commit (README, audit benchmarks), so that rate is the audit
    log's, not the signer's, and is not what this measures.
    """
    seconds = getattr(options, "seconds_licenses", None) or 5.0
    code = f"""
import json, os, sys, tempfile, time, uuid
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ["MARKETPLACE_DATA_DIR"] = tempfile.mkdtemp(prefix="bench-licenses-")
for name in ("MARKETPLACE_DATABASE_URL", "MARKETPLACE_LICENSE_SIGNER_KEY_ID",
             "MARKETPLACE_SIGNING_ENDPOINT", "MARKETPLACE_KEYSTORE_BACKEND"):
    os.environ.pop(name, None)
sys.path.insert(0, {str(REPO)!r})
import django
django.setup()
from django.utils import timezone
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from catalog.models import Sku
from licensing.jws import LICENSE_TOKEN, jws_sign
from licensing.services.licenses import license_claims, license_key_generate
from marketplace.keystore import Signer
from marketplace.models import User
from orders.models import Order

key = Ed25519PrivateKey.generate()
signer = Signer("license-bench", "EdDSA", key.sign)
sku = Sku(slug="bench-sku", version="1.0.0", license_duration_days=365,
          license_entitlements=["pro", "updates"], license_seats=3)
orders = [Order(id=uuid.uuid4(), sku=sku, sku_slug=sku.slug, sku_version=sku.version,
                license_duration_days=365, license_entitlements=["pro", "updates"],
                license_seats=3, buyer=User(uuid=uuid.uuid4())) for _ in range(1000)]

def ours():
    count, started = 0, time.perf_counter()
    inputs = []
    while time.perf_counter() - started < {seconds}:
        for order in orders:
            now = timezone.now()
            claims = license_claims(license_id=str(uuid.uuid4()), order=order, issued_at=now,
                                    expires_at=now)
            token = jws_sign(claims, signer, kind=LICENSE_TOKEN)
            license_key_generate()
            if len(inputs) < 1000:
                inputs.append(token.rsplit(".", 1)[0].encode())
        count += len(orders)
    return count / (time.perf_counter() - started), inputs

def floor(inputs):
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < {seconds}:
        for message in inputs:
            key.sign(message)
        count += len(inputs)
    return count / (time.perf_counter() - started)

rate, inputs = ours()
print(json.dumps({{"licenses_per_second": rate, "floor_signatures_per_second": floor(inputs)}}))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=REPO
    )
    if result.returncode != 0:
        print(result.stderr[-2000:], file=sys.stderr)
        return None
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    figures["ratio_to_floor"] = (
        figures["licenses_per_second"] / figures["floor_signatures_per_second"]
    )
    return figures


# --- report ------------------------------------------------------------------------------------


def environment() -> dict[str, str]:
    import cryptography
    from cryptography.hazmat.backends.openssl import backend

    cpu = ""
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "openssl": backend.openssl_version_text(),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.delivery.run", description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024, help="artifact size (1024)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side (3)")
    parser.add_argument("--chunk-size", type=int, default=1024 * 1024, help="bytes (1 MiB)")
    parser.add_argument("--dir", type=Path, default=SCRATCH, help=f"scratch folder ({SCRATCH})")
    parser.add_argument("--only", choices=["packaging", "licenses"])
    parser.add_argument("--seconds-licenses", type=float, default=10.0)
    parser.add_argument("--strict", action="store_true", help="exit 3 when a target is missed")
    parser.add_argument("--no-save", action="store_true", help="write no JSON")
    parser.add_argument("--worker", choices=["ours", "floor"], help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        worker(options.worker, options.input, options.output, options.chunk_size)
        return 0

    report: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "environment": environment(),
    }
    missed: list[str] = []
    report["load_before"] = round(os.getloadavg()[0], 2)
    print("environment:", ", ".join(f"{k} {v}" for k, v in report["environment"].items()))
    if options.only != "licenses":
        print(
            f"packaging {options.size_mib} MiB, {options.chunk_size} B chunks, "
            f"{options.rounds} rounds per side:",
            flush=True,
        )
        pack = packaging(options)
        report["packaging"] = pack
        ours, floor = pack["ours"], pack["floor"]
        print()
        print(f"  {'median':6}  {'MiB/s':>8}  {'wall s':>7}  {'CPU s':>6}  {'peak RSS':>9}")
        for name, side in (("ours", ours), ("floor", floor)):
            print(
                f"  {name:6}  {side['mib_per_second']:8.1f}  {side['seconds']:7.2f}  "
                f"{side['cpu_seconds']:6.2f}  {side['peak_rss_mb']:6.1f} MB"
            )
        ratio_ok = pack["ratio"] >= RATIO_TARGET
        rss_ok = ours["peak_rss_mb"] < RSS_TARGET_MB
        print(
            f"  ratio ours/floor {pack['ratio']:.3f} (target >= {RATIO_TARGET}) "
            f"{'PASS' if ratio_ok else 'FAIL'}; ours' peak RSS {ours['peak_rss_mb']:.1f} MB "
            f"(target < {RSS_TARGET_MB} MB) {'PASS' if rss_ok else 'FAIL'}"
        )
        print(
            f"  (per CPU second: ours/floor {pack['cpu_ratio']:.3f}; load average before "
            f"{report['load_before']}, after {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores)"
        )
        if pack["decrypt_mib_per_second"]:
            print(f"  (decrypt_stream, once, checking: {pack['decrypt_mib_per_second']:.1f} MiB/s)")
        missed += [] if ratio_ok else ["packaging ratio"]
        missed += [] if rss_ok else ["packaging peak RSS"]
    if options.only != "packaging":
        licenses = measure_licenses(options)
        report["licenses"] = licenses
        if licenses is None:
            print("licenses issued and signed per second: not measured (measure_licenses)")
        else:
            rate = licenses["licenses_per_second"]
            ok = rate >= LICENSES_TARGET_PER_SECOND
            print(
                f"licenses issued and signed: {rate:.0f}/s "
                f"(target >= {LICENSES_TARGET_PER_SECOND}) {'PASS' if ok else 'FAIL'}; "
                f"floor (bare Ed25519 signatures): "
                f"{licenses['floor_signatures_per_second']:.0f}/s, "
                f"ratio {licenses['ratio_to_floor']:.2f}"
            )
            missed += [] if ok else ["licenses per second"]
    if not options.no_save:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = RESULTS_DIR / f"delivery-{stamp}.json"
        path.write_text(json.dumps(report, indent=2))
        print(f"saved {path.relative_to(REPO)}")
    return 3 if options.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
