"""``python -m licensing.decrypt``, run as a buyer runs it: a copy of the four module files, a
clean environment, and Django made impossible to import."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from licensing.envelope import encrypt_stream, read_header
from licensing.sealing import (
    b64url_encode,
    delivery_info,
    load_public_key,
    private_key_pem,
    seal_text,
)

REPO = Path(__file__).resolve().parents[2]
BUYER_FILES = ("__init__.py", "envelope.py", "sealing.py", "decrypt.py")
CONTEXT = b"delivery 7d1c0b7e"
ARTIFACT = os.urandom(3 * 4096 + 123)
SHA = hashlib.sha256(ARTIFACT).hexdigest()
# Any `import django` (or of a submodule) raises ImportError in the child.
BLOCK_DJANGO = "import sys\nsys.modules['django'] = None\n"


@pytest.fixture
def buyer(tmp_path: Path) -> dict[str, str]:
    """The environment of a buyer's shell: only the licensing files, and no Django."""
    code = tmp_path / "code"
    (code / "licensing").mkdir(parents=True)
    for name in BUYER_FILES:
        shutil.copy(REPO / "licensing" / name, code / "licensing" / name)
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCK_DJANGO)
    return {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": f"{code}{os.pathsep}{blocker}",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


@pytest.fixture
def work(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


def decrypt(
    env: dict[str, str], cwd: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "licensing.decrypt", *args],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def make_package(folder: Path, key: bytes, data: bytes = ARTIFACT) -> Path:
    path = folder / "artifact.pkg"
    with path.open("wb") as out:
        encrypt_stream(io.BytesIO(data), out, data_key=key, chunk_size=4096, context=CONTEXT)
    return path


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


def assert_failed(result: subprocess.CompletedProcess[str], code: int, words: str) -> None:
    assert result.returncode == code, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("decrypt: ")
    assert words in lines[0]


def test_the_blocker_really_keeps_django_out(buyer, work) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import django"],
        env=buyer,
        cwd=work,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "ModuleNotFoundError" in result.stderr or "ImportError" in result.stderr
    # ... and the buyer's copy is what runs, not the repository's package.
    found = subprocess.run(
        [sys.executable, "-c", "import licensing; print(licensing.__file__)"],
        env=buyer,
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
    )
    assert not found.stdout.startswith(str(REPO))


def test_decrypts_with_the_data_key(buyer, work) -> None:
    key = os.urandom(32)
    package = make_package(work, key)
    out = work / "artifact.bin"
    result = decrypt(buyer, work, str(package), "--key", b64url_encode(key), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{SHA}  {out}\n"
    assert result.stderr == ""
    assert out.read_bytes() == ARTIFACT
    assert leftovers(work) == []
    # The artifact gets ordinary permissions, not the temporary file's 0600.
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask


def test_reads_the_key_from_stdin_and_checks_the_expected_hash(buyer, work) -> None:
    key = os.urandom(32)
    package = make_package(work, key)
    out = work / "artifact.bin"
    result = decrypt(
        buyer,
        work,
        str(package),
        "--key",
        "-",
        "--out",
        str(out),
        "--expect-sha256",
        SHA.upper(),
        stdin=b64url_encode(key) + "\n",
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == ARTIFACT


def test_decrypts_with_the_identity_and_the_wrapped_key(buyer, work) -> None:
    from cryptography.hazmat.primitives.asymmetric import x25519

    identity = x25519.X25519PrivateKey.generate()
    key = os.urandom(32)
    package = make_package(work, key)
    wrapped = seal_text(identity.public_key().public_bytes_raw(), key, info=delivery_info(CONTEXT))
    pem = work / "me.pem"
    pem.write_bytes(private_key_pem(identity))
    raw = work / "me.key"
    raw.write_text(b64url_encode(identity.private_bytes_raw()) + "\n")
    for identity_file in (pem, raw):
        out = work / f"from-{identity_file.suffix[1:]}.bin"
        result = decrypt(
            buyer,
            work,
            str(package),
            "--identity",
            str(identity_file),
            "--wrapped-key",
            wrapped,
            "--out",
            str(out),
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"{SHA}  {out}\n"
        assert out.read_bytes() == ARTIFACT


def test_new_identity_makes_a_private_key_whose_public_key_works(buyer, work) -> None:
    path = work / "me.pem"
    result = decrypt(buyer, work, "--new-identity", str(path))
    assert result.returncode == 0, result.stderr
    public = load_public_key(result.stdout.strip())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    key = os.urandom(32)
    package = make_package(work, key)
    wrapped = seal_text(public, key, info=delivery_info(CONTEXT))
    out = work / "artifact.bin"
    opened = decrypt(
        buyer,
        work,
        str(package),
        "--identity",
        str(path),
        "--wrapped-key",
        wrapped,
        "--out",
        str(out),
    )
    assert opened.returncode == 0, opened.stderr
    assert out.read_bytes() == ARTIFACT

    again = decrypt(buyer, work, "--new-identity", str(path))
    assert_failed(again, 2, "exists")


def test_a_tampered_package_leaves_no_output(buyer, work) -> None:
    key = os.urandom(32)
    package = make_package(work, key)
    data = bytearray(package.read_bytes())
    data[len(data) // 2] ^= 0x04
    package.write_bytes(bytes(data))
    out = work / "artifact.bin"
    result = decrypt(buyer, work, str(package), "--key", b64url_encode(key), "--out", str(out))
    assert_failed(result, 1, "failed authentication")
    assert not out.exists()
    assert leftovers(work) == []


def test_a_truncated_package_leaves_an_existing_file_alone(buyer, work) -> None:
    key = os.urandom(32)
    package = make_package(work, key)
    header = read_header(io.BytesIO(package.read_bytes()))
    package.write_bytes(package.read_bytes()[: header.size + 2 * (4096 + 16)])
    out = work / "artifact.bin"
    out.write_bytes(b"an older file")
    result = decrypt(buyer, work, str(package), "--key", b64url_encode(key), "--out", str(out))
    assert_failed(result, 1, "truncated")
    assert out.read_bytes() == b"an older file"
    assert leftovers(work) == []


def test_wrong_keys_fail(buyer, work) -> None:
    from cryptography.hazmat.primitives.asymmetric import x25519

    key = os.urandom(32)
    package = make_package(work, key)
    out = work / "artifact.bin"
    wrong = decrypt(buyer, work, str(package), "--key", b64url_encode(bytes(32)), "--out", str(out))
    assert_failed(wrong, 1, "wrong key")

    stranger = work / "stranger.pem"
    stranger.write_bytes(private_key_pem(x25519.X25519PrivateKey.generate()))
    intended = x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()
    wrapped = seal_text(intended, key, info=delivery_info(CONTEXT))
    result = decrypt(
        buyer,
        work,
        str(package),
        "--identity",
        str(stranger),
        "--wrapped-key",
        wrapped,
        "--out",
        str(out),
    )
    assert_failed(result, 1, "does not open")

    # A wrapped key made for another package's context does not open either.
    stranger_key = x25519.X25519PrivateKey.generate()
    stranger.write_bytes(private_key_pem(stranger_key))
    other = seal_text(
        stranger_key.public_key().public_bytes_raw(), key, info=delivery_info(b"other")
    )
    result = decrypt(
        buyer,
        work,
        str(package),
        "--identity",
        str(stranger),
        "--wrapped-key",
        other,
        "--out",
        str(out),
    )
    assert_failed(result, 1, "does not open")
    assert not out.exists()
    assert leftovers(work) == []


def test_an_unexpected_hash_leaves_no_output(buyer, work) -> None:
    key = os.urandom(32)
    package = make_package(work, key)
    out = work / "artifact.bin"
    result = decrypt(
        buyer,
        work,
        str(package),
        "--key",
        b64url_encode(key),
        "--out",
        str(out),
        "--expect-sha256",
        "0" * 64,
    )
    assert_failed(result, 1, f"SHA-256 is {SHA}")
    assert not out.exists()
    assert leftovers(work) == []


def test_not_a_package(buyer, work) -> None:
    package = work / "notes.txt"
    package.write_text("hello")
    out = work / "artifact.bin"
    result = decrypt(
        buyer, work, str(package), "--key", b64url_encode(bytes(32)), "--out", str(out)
    )
    assert_failed(result, 1, "not a delivery package")
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--out", "x.bin"], "give PACKAGE and --out FILE"),
        (["artifact.pkg", "--key", "AAAA"], "give PACKAGE and --out FILE"),
        (["artifact.pkg", "--out", "x.bin"], "either --key, or --identity"),
        (["artifact.pkg", "--out", "x.bin", "--key", "A", "--identity", "me.pem"], "either"),
        (["artifact.pkg", "--out", "x.bin", "--identity", "me.pem"], "go together"),
        (["artifact.pkg", "--out", "x.bin", "--key", "!!"], "not base64url"),
        (["artifact.pkg", "--out", "x.bin", "--key", "AAAA"], "32 bytes in base64url, not 3"),
        (["missing.pkg", "--out", "x.bin", "--key", "AAAA"], "no such package file"),
        (["artifact.pkg", "--out", "artifact.pkg", "--key", "A" * 43], "not be the package"),
        (["artifact.pkg", "--out", "nowhere/x.bin", "--key", "A" * 43], "no such folder"),
        (["artifact.pkg", "--out", "x.bin", "--key", "A" * 43, "--expect-sha256", "ab"], "64"),
        (
            ["artifact.pkg", "--out", "x.bin", "--identity", "none.pem", "--wrapped-key", "AA"],
            "none.pem",
        ),
    ],
)
def test_usage_errors_exit_2(buyer, work, args: list[str], words: str) -> None:
    make_package(work, os.urandom(32))
    result = decrypt(buyer, work, *args)
    assert_failed(result, 2, words)
    assert not (work / "x.bin").exists()


def test_a_bad_identity_file_is_a_usage_error(buyer, work) -> None:
    package = make_package(work, os.urandom(32))
    identity = work / "me.pem"
    identity.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    result = decrypt(
        buyer,
        work,
        str(package),
        "--identity",
        str(identity),
        "--wrapped-key",
        "AA",
        "--out",
        "x.bin",
    )
    assert_failed(result, 2, "cannot be read")


def test_imports_nothing_of_django_or_the_platform(buyer, work) -> None:
    """With the blocker off, -X importtime lists every module the command imports."""
    key = os.urandom(32)
    package = make_package(work, key)
    env = {**buyer, "PYTHONPATH": buyer["PYTHONPATH"].split(os.pathsep)[0]}
    result = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "licensing.decrypt",
            str(package),
            "--key",
            b64url_encode(key),
            "--out",
            str(work / "artifact.bin"),
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "licensing.envelope" in imported
    assert "cryptography" in imported
    platform = {"django", "rest_framework", "marketplace", "catalog", "orders", "audit", "config"}
    assert not {name for name in imported if name.split(".")[0] in platform}


def test_a_key_that_starts_with_a_dash_is_a_key_not_an_option(buyer, work) -> None:
    # One data key in 64 encodes to base64url starting with "-".
    key = next(k for k in iter(lambda: os.urandom(32), None) if b64url_encode(k).startswith("-"))
    package = make_package(work, key)
    out = work / "artifact.bin"

    result = decrypt(buyer, work, str(package), "--key", b64url_encode(key), "--out", str(out))

    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == ARTIFACT
