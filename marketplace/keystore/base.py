"""What every backend answers: a key it made, and the protocol it follows."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from marketplace.models import SigningKey, SigningKeyBackend


@dataclass(frozen=True)
class NewKey:
    """A key a backend has just made (or adopted), before it is recorded."""

    algorithm: str
    public_key: bytes  # SubjectPublicKeyInfo, DER
    backend_key_id: str = ""
    private_key_sealed: bytes = b""


class Backend(Protocol):
    name: SigningKeyBackend

    def create(self, *, kid: str, purpose: str) -> NewKey: ...

    def signing_function(self, key: SigningKey) -> Callable[[bytes], bytes]:
        """What signs with `key`: message in, JOSE-form signature out."""
        ...

    def discard(self, new: NewKey) -> None:
        """Best effort: gives up a key that was made but not recorded (a lost race)."""
        ...
