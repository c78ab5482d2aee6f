"""The init container's program: downloads each file of a preview's material from its presigned
URL into the folder the sandbox then mounts read-only, checking its size and SHA-256.

Run in the sandbox's image as ``python3 -I -B fetch.py FILES_JSON TARGET`` from the session's
ConfigMap (previews.provisioners.kubernetes.objects ships this file's text), so it imports the
standard library only and uses nothing newer than Python 3.8: the image's python3 may be old.
FILES_JSON is a list of ``{"path", "url", "sha256", "size"}``. Messages name paths, never URLs:
a failure's message ends up in the Pod's status, which the platform's operators read.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import urllib.request
from pathlib import PurePosixPath
from typing import Any, NoReturn

CHUNK_BYTES = 1024 * 1024
TIMEOUT_SECONDS = 60


def fail(message: str) -> NoReturn:
    print(message, file=sys.stderr)
    sys.exit(1)


def fetch(item: dict[str, Any], target: str) -> None:
    path, url, size_expected = item["path"], item["url"], item["size"]
    relative = PurePosixPath(path)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        fail(f"unsafe path in the material: {path!r}")
    if not url.startswith(("https://", "http://")):
        fail(f"not an HTTP URL for {path}")
    destination = os.path.join(target, *relative.parts)
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    try:
        # The scheme is checked above; the URL is the platform's, presigned for this file.
        response = urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS)  # noqa: S310
        with response, open(destination, "xb") as out:
            while chunk := response.read(CHUNK_BYTES):
                size += len(chunk)
                if size > size_expected:
                    fail(f"{path} is larger than recorded")
                digest.update(chunk)
                out.write(chunk)
    except OSError as exc:
        fail(f"{path} could not be downloaded: {getattr(exc, 'reason', exc)}")
    if size != size_expected or digest.hexdigest() != item["sha256"]:
        fail(f"{path} does not match its recorded SHA-256")
    os.chmod(destination, 0o444)


def main(argv: list[str]) -> int:
    listing, target = argv
    with open(listing, encoding="utf-8") as f:
        files = json.load(f)
    for item in files:
        fetch(item, target)
    print(f"fetched {len(files)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
