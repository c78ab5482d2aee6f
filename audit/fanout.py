"""Pushing the chain to the Kernel's audit-append API, in order, from a worker."""

from django.conf import settings


def kernel_push_soon() -> None:
    """Called after a commit that appended events. The local Kernel backend keeps no copy."""
    if not settings.KERNEL_URL:
        return
