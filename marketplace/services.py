from datetime import datetime

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.utils import timezone

from audit.chain import format_time
from audit.services import Actor, audit_append
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
