"""What the licensing admin pages share."""

import uuid

from django.db.models import Q, QuerySet


def uuid_of(term: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(term.strip())
    except ValueError:
        return None


def by_id_or_order(queryset: QuerySet, term: str) -> QuerySet | None:
    """The rows whose own id or order id is `term`, when it is a UUID; None otherwise."""
    value = uuid_of(term)
    if value is None:
        return None
    return queryset.filter(Q(pk=value) | Q(order_id=value))


def short_hash(value: str) -> str:
    return f"{value[:12]}…" if value else "—"
