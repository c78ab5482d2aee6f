from django.conf import settings
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from marketplace.models import ApiToken, User


class MalformedBearer(ValueError):
    """An Authorization header of the Bearer scheme that does not hold one ASCII token."""


def bearer_token(header: str | bytes | None) -> str | None:
    """The token of `Authorization: Bearer <token>` (the scheme in any case), or None when the
    header is absent or of another scheme. Raises MalformedBearer when it is of the Bearer
    scheme but holds no token, more than one, or one that is not ASCII. Every reader of a
    bearer token (the API's, /health/details', /metrics') parses it here."""
    if isinstance(header, str):
        header = header.encode("latin-1", "replace")
    parts = (header or b"").split()
    if not parts or parts[0].lower() != b"bearer":
        return None
    if len(parts) != 2:
        raise MalformedBearer("Malformed Authorization header: send 'Bearer <token>'.")
    try:
        return parts[1].decode("ascii")
    except UnicodeDecodeError:
        raise MalformedBearer("The bearer token must be ASCII.") from None


class BearerTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer mkp_...`, an API token made by `issue_api_token`."""

    def authenticate(self, request: Request) -> tuple[User, ApiToken] | None:
        try:
            token = bearer_token(get_authorization_header(request))
        except MalformedBearer as exc:
            raise AuthenticationFailed(str(exc)) from None
        if token is None:
            return None

        api_token = (
            ApiToken.objects.select_related("user").filter(digest=ApiToken.digest_of(token)).first()
        )
        now = timezone.now()
        if api_token is None or not api_token.is_usable_at(now) or not api_token.user.is_active:
            raise AuthenticationFailed("The bearer token is unknown, expired or revoked.")

        # Recording every use would turn each read into a write; once a minute is enough.
        touch_after = settings.API_TOKEN_TOUCH_SECONDS
        if api_token.last_used_at is None or (now - api_token.last_used_at).total_seconds() > (
            touch_after
        ):
            ApiToken.objects.filter(pk=api_token.pk).update(last_used_at=now)
        return api_token.user, api_token

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="marketplace"'


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "marketplace.api.authentication.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: object) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "An API token (mkp_...)."}
