"""The audited writes on people: buyers and their API tokens."""

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
    user, _ = buyer_get_or_create(email=email, actor=actor)
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


@transaction.atomic
def staff_account_ensure(
    *, email: str, password: str | None, roles: list[str], actor: Actor
) -> tuple[User, bool]:
    """The superuser staff account with this email, created if there is none, in at least
    `roles`. `password` sets its password (kept as it is when None, unless the account is new;
    a new account without one cannot log in with a password). Answers the account and whether
    it was created.

    Records `staff.created`, `staff.password_set` and `staff.roles_added` for what changed,
    naming the account by uuid; never the password or the email.
    """
    user = User.objects.select_for_update().filter(email__iexact=email).first()
    created = user is None
    if user is None:
        user = User.objects.create_user(email=email, password=password)
    elif password is not None:
        user.set_password(password)
    if not (user.is_staff and user.is_superuser):
        user.is_staff = user.is_superuser = True
    user.save()
    subject = _user_subject(user)
    if created:
        audit_append(actor=actor, action="staff.created", subject=subject, data={})
    elif password is not None:
        audit_append(actor=actor, action="staff.password_set", subject=subject, data={})
    missing = Group.objects.filter(name__in=roles).exclude(pk__in=user.groups.values("pk"))
    added = sorted(missing.values_list("name", flat=True))
    if added:
        user.groups.add(*missing)
        audit_append(
            actor=actor, action="staff.roles_added", subject=subject, data={"roles": added}
        )
    return user, created
