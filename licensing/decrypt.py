"""Decrypt a delivery package: ``python -m licensing.decrypt PACKAGE --key KEY --out FILE``.

Needs only Python and ``cryptography`` (no Django, no platform settings); a buyer can copy the
``licensing`` folder's ``__init__.py``, ``envelope.py``, ``sealing.py`` and ``decrypt.py``.

    python -m licensing.decrypt PACKAGE --key KEY --out FILE
    python -m licensing.decrypt PACKAGE --identity ME.pem --wrapped-key TEXT --out FILE
    python -m licensing.decrypt --new-identity ME.pem      # prints the public key to register

KEY is the ``decryption_key`` of the delivery (base64url; ``-`` reads it from standard input, which
keeps it out of the process list and shell history). With a registered public key, the delivery
gives ``wrapped_key`` instead, opened with the private key in ``--identity`` (PEM PKCS#8, or the
raw 32 bytes in base64url). Every chunk is authenticated before it is written; the plaintext goes
to a temporary file next to FILE, renamed to FILE only when the whole package has checked out
(and its SHA-256 matches ``--expect-sha256``, if given). On success it prints
``<sha256>  <FILE>`` (``sha256sum`` format) and exits 0. On failure it prints one line
``decrypt: <reason>`` to standard error, leaves no FILE, and exits 1 when the package, key or
expected hash is wrong, 2 when the command line or a key file cannot be used.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path

from licensing.envelope import PackageError, decrypt_stream, read_header
from licensing.sealing import (
    InvalidKeyError,
    SealedKeyError,
    b64url_decode,
    delivery_info,
    load_private_key,
    open_sealed_text,
    private_key_pem,
    public_key_text,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
_READ_BUFFER = 1024 * 1024


class Failure(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m licensing.decrypt",
        description="Decrypt and check a delivery package.",
    )
    parser.add_argument(
        "package", nargs="?", type=Path, metavar="PACKAGE", help="the downloaded package file"
    )
    parser.add_argument("--out", type=Path, metavar="FILE", help="where to write the artifact")
    parser.add_argument(
        "--key", metavar="KEY", help="the data key, base64url ('-' reads it from stdin)"
    )
    parser.add_argument(
        "--identity", type=Path, metavar="FILE", help="your X25519 private key file"
    )
    parser.add_argument(
        "--wrapped-key", metavar="TEXT", help="the sealed data key given with the delivery"
    )
    parser.add_argument(
        "--expect-sha256", metavar="HEX", help="the artifact's SHA-256 (hex) to insist on"
    )
    parser.add_argument(
        "--new-identity",
        type=Path,
        metavar="FILE",
        help="create an X25519 private key in FILE and print its public key; nothing else",
    )
    return parser


# Options whose values are base64url: one in 64 keys starts with "-", which argparse would
# otherwise take for an option and refuse.
_VALUE_OPTIONS = ("--key", "--wrapped-key", "--expect-sha256")


def _join_values(argv: list[str]) -> list[str]:
    joined: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg in _VALUE_OPTIONS and index + 1 < len(argv):
            joined.append(f"{arg}={argv[index + 1]}")
            index += 2
            continue
        joined.append(arg)
        index += 1
    return joined


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    options = parser.parse_args(_join_values(sys.argv[1:] if argv is None else argv))
    try:
        if options.new_identity is not None:
            if options.package or options.key or options.identity or options.wrapped_key:
                raise Failure("--new-identity takes no other option", EXIT_USAGE)
            print(new_identity(options.new_identity))
            return EXIT_OK
        digest = run(options)
    except Failure as failure:
        print(f"decrypt: {failure}", file=sys.stderr)
        return failure.code
    print(f"{digest}  {options.out}")
    return EXIT_OK


def run(options: argparse.Namespace) -> str:
    """Check the options, decrypt, and return the artifact's SHA-256; Failure otherwise."""
    if options.package is None or options.out is None:
        raise Failure("give PACKAGE and --out FILE", EXIT_USAGE)
    if (options.key is None) == (options.identity is None):
        raise Failure("give either --key, or --identity with --wrapped-key", EXIT_USAGE)
    if (options.identity is None) != (options.wrapped_key is None):
        raise Failure("--identity and --wrapped-key go together", EXIT_USAGE)
    expected = _expected_digest(options.expect_sha256)
    package: Path = options.package
    out: Path = options.out
    if not package.is_file():
        raise Failure(f"{package}: no such package file", EXIT_USAGE)
    if out.exists() and out.resolve() == package.resolve():
        raise Failure("--out must not be the package itself", EXIT_USAGE)
    if not out.parent.is_dir():
        raise Failure(f"{out.parent}: no such folder for --out", EXIT_USAGE)

    with package.open("rb", buffering=_READ_BUFFER) as src:
        try:
            context = read_header(src).context
            src.seek(0)
        except PackageError as error:
            raise Failure(str(error)) from error
        data_key = _data_key(options, context)
        temp = _temporary_next_to(out)
        try:
            with temp.open("wb", buffering=_READ_BUFFER) as dst:
                try:
                    info = decrypt_stream(src, dst, data_key=data_key, context=context)
                except PackageError as error:
                    raise Failure(str(error)) from error
                dst.flush()
                os.fsync(dst.fileno())
            if expected is not None and info.plaintext_sha256 != expected:
                raise Failure(
                    f"the artifact's SHA-256 is {info.plaintext_sha256}, not the expected "
                    f"{expected}"
                )
            os.replace(temp, out)
        except BaseException:
            # Partly written or unchecked plaintext must not stay where it could pass for the
            # artifact; this also covers Ctrl-C.
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            raise
    return info.plaintext_sha256


def _expected_digest(text: str | None) -> str | None:
    if text is None:
        return None
    digest = text.strip().lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise Failure("--expect-sha256 must be 64 hexadecimal digits", EXIT_USAGE)
    return digest


def _data_key(options: argparse.Namespace, context: bytes) -> bytes:
    if options.key is not None:
        text = sys.stdin.readline() if options.key == "-" else options.key
        try:
            key = b64url_decode(text)
        except ValueError as error:
            raise Failure("--key is not base64url text", EXIT_USAGE) from error
        if len(key) != 32:
            raise Failure(f"--key must be 32 bytes in base64url, not {len(key)}", EXIT_USAGE)
        return key
    try:
        identity = load_private_key(options.identity.read_bytes())
    except OSError as error:
        raise Failure(f"{options.identity}: {error.strerror}", EXIT_USAGE) from error
    except InvalidKeyError as error:
        raise Failure(f"{options.identity}: {error}", EXIT_USAGE) from error
    try:
        return open_sealed_text(identity, options.wrapped_key, info=delivery_info(context))
    except SealedKeyError as error:
        raise Failure(str(error)) from error


def _temporary_next_to(out: Path) -> Path:
    # Same folder, so the final rename is atomic and never crosses file systems.
    handle, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    # mkstemp makes the file private (0600); the artifact gets the usual permissions instead.
    os.chmod(name, 0o666 & ~umask)
    return Path(name)


def new_identity(path: Path) -> str:
    """Write a new X25519 private key (PEM, mode 0600) to ``path``; its public key text."""
    from cryptography.hazmat.primitives.asymmetric import x25519

    key = x25519.X25519PrivateKey.generate()
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as error:
        raise Failure(f"{path} exists; it is not overwritten", EXIT_USAGE) from error
    except OSError as error:
        raise Failure(f"{path}: {error.strerror}", EXIT_USAGE) from error
    with os.fdopen(descriptor, "wb") as file:
        file.write(private_key_pem(key))
    return public_key_text(key)


if __name__ == "__main__":
    sys.exit(main())
