"""What a provisioner is: the one interface the session services drive.

A provisioner starts a sandbox for a session and tears it down, and can list what it runs so the
garbage collector can find sandboxes no session knows. It never touches the database: the
services record what it did (previews.services).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class ProvisionFailed(Exception):
    """The sandbox could not be started; `detail` says why, for the session's end reason. The
    provisioner has already removed whatever it had made."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail[:500]


@dataclass(frozen=True)
class MaterialFile:
    path: str
    storage_key: str
    sha256: str
    size: int


@dataclass(frozen=True)
class StartRequest:
    """Everything a provisioner needs to start one session's sandbox."""

    session_id: str
    environment_id: str
    sku_slug: str
    material_digest: str
    material_version: int
    command: list[str]
    files: tuple[MaterialFile, ...]
    expires_at: float  # epoch seconds: the sandbox must not outlive it
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Environment:
    """A started sandbox: where the serving view reaches it.

    `endpoint` is ``unix:/path/to/http.sock`` (local) or ``http://host:port`` (Kubernetes).
    """

    environment_id: str
    endpoint: str
    host: str = ""


@dataclass(frozen=True)
class Running:
    """A sandbox the provisioner sees running, with the expiry it was given (None: unknown)."""

    environment_id: str
    expires_at: float | None


class Provisioner(Protocol):
    name: str

    def start(self, request: StartRequest, *, timeout: float) -> Environment:
        """Starts the sandbox and returns once it answers HTTP, or raises ProvisionFailed
        (having removed what it made). `timeout` bounds the wait for it to answer."""
        ...

    def teardown(self, environment_id: str) -> bool:
        """Stops and removes the sandbox; True if something was there. Idempotent, and safe for
        an id that was never started or only half started."""
        ...

    def alive(self, environment_id: str) -> bool | None:
        """Whether the sandbox still runs; None when the provisioner cannot tell right now."""
        ...

    def running(self) -> list[Running]:
        """Every sandbox this provisioner runs, known to the database or not."""
        ...
