"""Provisioners, chosen by MARKETPLACE_PREVIEW_PROVISIONER: `local` or `kubernetes`."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from previews.provisioners.base import (
    Environment,
    MaterialFile,
    Provisioner,
    ProvisionFailed,
    Running,
    StartRequest,
)

PROVISIONERS = ("local", "kubernetes")

__all__ = [
    "PROVISIONERS",
    "Environment",
    "MaterialFile",
    "ProvisionFailed",
    "Provisioner",
    "Running",
    "StartRequest",
    "provisioner_get",
]


def provisioner_get(name: str | None = None) -> Provisioner:
    """The provisioner named (default: the configured one)."""
    name = name or settings.PREVIEW_PROVISIONER
    if name == "local":
        from previews.provisioners.local import LocalProvisioner

        return LocalProvisioner()
    if name == "kubernetes":
        from previews.provisioners.kubernetes import KubernetesProvisioner

        return KubernetesProvisioner()
    raise ImproperlyConfigured(
        f"MARKETPLACE_PREVIEW_PROVISIONER is {name!r}; use one of {', '.join(PROVISIONERS)}."
    )
