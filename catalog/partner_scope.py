"""Partner staff: staff bound to one partner by the identity provider's partner claim
(accounts.Identity.partner_slug, set at each sign-in). Every admin page they can reach narrows
its rows through `partner_scope`, so lists, search, filters, autocomplete, actions and direct
URLs all see the same rows: their partner's, and nothing of another."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.contrib.auth.models import AnonymousUser
from django.db.models import Model, Q, QuerySet

from accounts.models import Identity
from catalog.models import Partner
from marketplace.roles import PARTNER_STAFF

_M = TypeVar("_M", bound=Model)

# Where the answer is kept on the user object, which Django loads afresh for each request.
_CACHE = "_partner_scope"


@dataclass(frozen=True)
class _Scope:
    partner_staff: bool
    partner: Partner | None


def _scope(user: Any) -> _Scope:
    cached = getattr(user, _CACHE, None)
    if cached is not None:
        return cached
    scope = _Scope(False, None)
    if (
        not isinstance(user, AnonymousUser)
        and user.is_authenticated
        and not user.is_superuser
        and user.groups.filter(name=PARTNER_STAFF).exists()
    ):
        # Exactly one identity names the partner; anything else (none, several, an empty or
        # unknown slug) binds the member to no partner, and they see nothing.
        slugs = list(Identity.objects.filter(user=user).values_list("partner_slug", flat=True)[:2])
        partner = None
        if len(slugs) == 1 and slugs[0]:
            partner = Partner.objects.filter(slug=slugs[0]).first()
        scope = _Scope(True, partner)
    setattr(user, _CACHE, scope)
    return scope


def is_partner_staff(user: Any) -> bool:
    """Whether `user` holds the Partner staff role and is not a superuser: their admin is
    narrowed to their partner, whatever other role they also hold."""
    return _scope(user).partner_staff


def partner_of_staff(user: Any) -> Partner | None:
    """The partner a Partner staff member is bound to; None for anyone else, and for a member
    whose identity names no partner or one the catalog does not know. Cached on `user` for
    the request."""
    return _scope(user).partner


def partner_scope(
    queryset: QuerySet[_M], user: Any, rows_of: Callable[[Partner], Q]
) -> QuerySet[_M]:
    """`queryset` as `user` may see it: whole for anyone but Partner staff, the rows
    `rows_of(partner)` selects for a member bound to a partner, and none for a member bound
    to none."""
    scope = _scope(user)
    if not scope.partner_staff:
        return queryset
    if scope.partner is None:
        return queryset.none()
    return queryset.filter(rows_of(scope.partner))
