from datetime import datetime

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.utils import timezone

from marketplace.exceptions import InvalidInput
from marketplace.models import ApiToken, User


def buyer_get_or_create(*, email: str) -> tuple[User, bool]:
    """Finds the account for an email (case-insensitively) or creates a buyer for it."""
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
    return User.objects.create_user(email=email), True


@transaction.atomic
def api_token_issue(
    *, email: str, name: str = "", expires_at: datetime | None = None
) -> tuple[ApiToken, str]:
    """Issues a token for the account with this email, creating a buyer if there is none.

    Returns the stored token and the token itself, which is not kept and cannot be shown again.
    """
    user, _ = buyer_get_or_create(email=email)
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
    return api_token, token


@transaction.atomic
def api_token_revoke(*, token_pk: int) -> bool:
    """Revokes a token; returns False if it already was."""
    token = ApiToken.objects.select_for_update().get(pk=token_pk)
    if token.revoked_at is not None:
        return False
    token.revoked_at = timezone.now()
    token.save(update_fields=["revoked_at"])
    return True
