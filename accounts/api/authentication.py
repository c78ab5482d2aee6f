"""Buyers (and staff) on the API with an access token from the identity provider.

`Authorization: Bearer <JWT>` where the JWT is the provider's access token for the API
(`aud` = MARKETPLACE_OIDC_API_AUDIENCE), checked by `marketplace.oidc.verify`. The person is
found, or created as a buyer on first use, by (issuer, subject). API tokens (`mkp_…`) are left
to BearerTokenAuthentication, listed after this class.
"""

from typing import Any

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from accounts.services import buyer_of_identity
from marketplace import oidc
from marketplace.api.authentication import MalformedBearer, bearer_token
from marketplace.exceptions import ServiceUnavailable
from marketplace.models import ApiToken, User


class IdentityProviderUnavailable(ServiceUnavailable):
    code = "identity-provider-unavailable"
    title = "The identity provider cannot be reached"

    def default_retry_after(self) -> int:
        return 5


def _refused(code: str, reason: str) -> AuthenticationFailed:
    failed = AuthenticationFailed(reason)
    # The problem's `code` (marketplace.api.problems): token-expired, token-wrong-audience, …
    failed.default_code = f"token_{code}"
    return failed


def looks_like_jwt(token: str) -> bool:
    return not token.startswith(ApiToken.PREFIX) and token.count(".") == 2


class ProviderTokenAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[User, dict[str, Any]] | None:
        if not (settings.OIDC_API_AUDIENCE and settings.OIDC_ISSUER):
            return None
        try:
            token = bearer_token(get_authorization_header(request))
        except MalformedBearer:
            return None  # BearerTokenAuthentication answers it
        if token is None or not looks_like_jwt(token):
            return None
        try:
            claims = oidc.verify(token, audience=settings.OIDC_API_AUDIENCE, kind="access")
        except oidc.TokenRefused as exc:
            raise _refused(exc.code, exc.reason) from None
        except oidc.ProviderUnavailable as exc:
            raise IdentityProviderUnavailable(
                "The identity provider's keys cannot be fetched to check this token; retry shortly."
            ) from exc
        user = buyer_of_identity(
            issuer=settings.OIDC_ISSUER,
            subject=claims["sub"],
            email=claims.get("email") if claims.get("email_verified") is True else None,
        )
        if not user.is_active:
            raise _refused("account_disabled", "This account is deactivated.")
        return user, claims

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="marketplace"'


class ProviderTokenScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.api.authentication.ProviderTokenAuthentication"
    name = "providerToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "An access token from the company's identity provider, for the API "
            "audience (MARKETPLACE_OIDC_API_AUDIENCE).",
        }
