"""The audited writes on people: buyers, their API tokens, staff accounts and their access."""

from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.utils import timezone

from audit.chain import format_time
from audit.services import audit_append
from marketplace.actors import Actor
from marketplace.exceptions import InvalidInput
from marketplace.models import ApiToken, User


def _user_subject(user: User) -> tuple[str, str]:
    # Users are named by uuid, as actors are, so "what X did" and "what was done to X" match.
    return ("user", str(user.uuid))


@transaction.atomic
def buyer_get_or_create(*, email: str, actor: Actor) -> tuple[User, bool]:
    """Finds the account for an email (case-insensitively) or creates a buyer for it.

    Records `buyer.created` when it creates one. The email stays out of the audit log (which
    can never be edited); the event names the buyer by uuid.
    """
    return _buyer_get_or_create(email=email, actor=actor)


def _buyer_get_or_create(*, email: str, actor: Actor) -> tuple[User, bool]:
    """buyer_get_or_create in the caller's transaction (no savepoint of its own)."""
    email = email.strip()
    try:
        validate_email(email)
    except ValidationError:
        raise InvalidInput(
            f"{email!r} is not a valid email address.", errors={"email": ["Enter a valid email."]}
        ) from None
    existing = User.objects.filter(email__iexact=email).first()
    if existing is not None:
        return existing, False
    user = User.objects.create_user(email=email)
    audit_append(actor=actor, action="buyer.created", subject=_user_subject(user), data={})
    return user, True


@transaction.atomic
def api_token_issue(
    *, email: str, actor: Actor, name: str = "", expires_at: datetime | None = None
) -> tuple[ApiToken, str]:
    """Issues a token for the account with this email, creating a buyer if there is none.

    Returns the stored token and the token itself, which is not kept and cannot be shown again.
    Records `api_token.issued` with the token's hint, never the token.
    """
    user, _ = _buyer_get_or_create(email=email, actor=actor)
    if not user.is_active:
        raise InvalidInput(f"The account {user.email} is deactivated; it cannot get a token.")
    token = ApiToken.generate()
    api_token = ApiToken.objects.create(
        user=user,
        name=name,
        digest=ApiToken.digest_of(token),
        hint=token[:10],
        expires_at=expires_at,
    )
    audit_append(
        actor=actor,
        action="api_token.issued",
        subject=api_token,
        data={
            "user": str(user.uuid),
            "name": name,
            "hint": api_token.hint,
            "expires_at": format_time(expires_at) if expires_at else None,
        },
    )
    return api_token, token


@transaction.atomic
def api_token_revoke(*, token_pk: int, actor: Actor) -> bool:
    """Revokes a token; returns False if it already was (and records nothing then).
    Records `api_token.revoked`."""
    token = ApiToken.objects.select_for_update().select_related("user").get(pk=token_pk)
    if token.revoked_at is not None:
        return False
    token.revoked_at = timezone.now()
    token.save(update_fields=["revoked_at"])
    audit_append(
        actor=actor,
        action="api_token.revoked",
        subject=token,
        data={"user": str(token.user.uuid), "hint": token.hint},
    )
    return True


@dataclass(frozen=True)
class Access:
    """What an account may do: the flags and staff roles an audit event compares."""

    is_active: bool
    is_staff: bool
    is_superuser: bool
    roles: frozenset[str]

    @classmethod
    def of(cls, user: User) -> "Access":
        return cls(
            user.is_active,
            user.is_staff,
            user.is_superuser,
            frozenset(user.groups.values_list("name", flat=True)),
        )


def account_access_record(*, user: User, before: Access | None, actor: Actor) -> bool:
    """Records what changed in the account's access since `before` (None: the account is
    new), in the caller's transaction (the admin's save): `account.created` with its access
    for a new account, otherwise `account.access_changed` with the flags that changed and the
    roles added and removed. Records nothing, and answers False, when nothing did."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("account_access_record must run in the transaction of the change")
    after = Access.of(user)
    subject = _user_subject(user)
    if before is None:
        audit_append(
            actor=actor,
            action="account.created",
            subject=subject,
            data={
                "is_active": after.is_active,
                "is_staff": after.is_staff,
                "is_superuser": after.is_superuser,
                "roles": sorted(after.roles),
            },
        )
        return True
    changes: dict[str, object] = {
        flag: getattr(after, flag)
        for flag in ("is_active", "is_staff", "is_superuser")
        if getattr(before, flag) != getattr(after, flag)
    }
    if added := sorted(after.roles - before.roles):
        changes["roles_added"] = added
    if removed := sorted(before.roles - after.roles):
        changes["roles_removed"] = removed
    if changes:
        audit_append(actor=actor, action="account.access_changed", subject=subject, data=changes)
    return bool(changes)


def account_password_set_record(*, user: User, actor: Actor) -> None:
    """Records `account.password_set` (never the password) in the caller's transaction."""
    audit_append(actor=actor, action="account.password_set", subject=_user_subject(user), data={})


@transaction.atomic
def staff_account_ensure(
    *, email: str, password: str | None, roles: list[str], actor: Actor
) -> tuple[User, bool]:
    """The superuser staff account with this email, created if there is none, in at least
    `roles`. `password` sets its password (kept as it is when None, unless the account is new;
    a new account without one cannot log in with a password). Answers the account and whether
    it was created. Records what changed as the admin's edits are recorded
    (`account.created`, `account.access_changed`, `account.password_set`).
    """
    user = User.objects.select_for_update().filter(email__iexact=email).first()
    before = Access.of(user) if user is not None else None
    if user is None:
        user = User.objects.create_user(email=email, password=password)
    elif password is not None:
        user.set_password(password)
    user.is_staff = user.is_superuser = True
    user.save()
    user.groups.add(*Group.objects.filter(name__in=roles))
    account_access_record(user=user, before=before, actor=actor)
    if before is not None and password is not None:
        account_password_set_record(user=user, actor=actor)
    return user, before is None
