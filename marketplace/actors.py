"""Who caused a change: the value every audited write names as its actor.

It lives on the ground floor because every app records changes, and the audit log is only one
of the places an actor is read (the admin, the commands, the tasks pass it down).
"""

from dataclasses import dataclass
from typing import Any

from django.db import models


class ActorType(models.TextChoices):
    STAFF = "staff", "Staff user"
    BUYER = "buyer", "Buyer"
    SERVICE = "service", "Service"
    SYSTEM = "system", "System"


@dataclass(frozen=True)
class Actor:
    """A staff user or a buyer (by their uuid), or a named service."""

    type: str
    id: str

    @classmethod
    def of_user(cls, user: Any) -> "Actor":
        kind = ActorType.STAFF if user.is_staff else ActorType.BUYER
        return cls(kind, str(user.uuid))

    @classmethod
    def service(cls, name: str) -> "Actor":
        return cls(ActorType.SERVICE, name)

    @classmethod
    def system(cls, name: str = "") -> "Actor":
        return cls(ActorType.SYSTEM, name)
