import hashlib
import io
from typing import BinaryIO


class SizeLimitExceeded(Exception):
    pass


class HashingReader(io.RawIOBase):
    """Reads a stream once, front to back, computing its SHA-256 and size on the way.

    It refuses to seek, so a storage backend cannot rewind and feed the hash the same bytes
    twice; both S3 and file storage then stream it in bounded chunks.
    """

    def __init__(self, source: BinaryIO, *, max_bytes: int | None = None) -> None:
        self._source = source
        self._max_bytes = max_bytes
        self._sha256 = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._source.read(len(buffer))
        if not data:
            return 0
        self._sha256.update(data)
        self.size += len(data)
        if self._max_bytes is not None and self.size > self._max_bytes:
            raise SizeLimitExceeded(f"the file is larger than {self._max_bytes} bytes")
        buffer[: len(data)] = data
        return len(data)

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()
