import hashlib
import hmac
import json
import sys
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest, HttpResponse
from django.views import defaults
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.authentication import (
    BaseAuthentication,
    SessionAuthentication,
    get_authorization_header,
)
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import AllowAny, BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace.api.authentication import MalformedBearer, bearer_token
from marketplace.api.problems import problem_response
from marketplace.api.schema import HEALTH_SCHEMA, JWKS_SCHEMA
from marketplace.health import health_public, health_report, recent_health_report
from marketplace.keystore import jwks_of
from marketplace.middleware import outage_answer
from marketplace.models import SigningKey


class HealthView(APIView):
    authentication_classes: list[type] = []
    permission_classes = [AllowAny]
    throttle_classes: list[type] = []

    @extend_schema(
        summary="Readiness of the database, cache, broker and storage",
        responses={
            200: OpenApiResponse(HEALTH_SCHEMA, description="All checks passed"),
            503: OpenApiResponse(HEALTH_SCHEMA, description="At least one check failed"),
        },
    )
    def get(self, request: Request) -> Response:
        # One run answers every caller for MARKETPLACE_HEALTH_CACHE_SECONDS.
        report = recent_health_report()
        # Names and outcomes only: the errors name hosts, ports, folders and buckets.
        response = Response(health_public(report), status=200 if report["ok"] else 503)
        response["Cache-Control"] = "no-store"
        return response


health = HealthView.as_view()


# request.auth of a request that sent MARKETPLACE_HEALTH_TOKEN.
HEALTH_TOKEN_HOLDER = object()


class HealthTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer <MARKETPLACE_HEALTH_TOKEN>`. It needs no database, so the
    details can be read while the database is down (a staff session cannot be)."""

    def authenticate(self, request: Request) -> tuple[AnonymousUser, object] | None:
        try:
            token = bearer_token(get_authorization_header(request))
        except MalformedBearer as exc:
            raise AuthenticationFailed(str(exc)) from None
        if token is None:
            return None
        expected = settings.HEALTH_TOKEN
        if expected and hmac.compare_digest(token.encode(), expected.encode()):
            return AnonymousUser(), HEALTH_TOKEN_HOLDER
        raise AuthenticationFailed("This bearer token does not read the health details.")

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="marketplace"'


class StaffOrHealthToken(BasePermission):
    def has_permission(self, request: Request, view: APIView) -> bool:
        if request.auth is HEALTH_TOKEN_HOLDER:
            return True
        user = request.user
        return bool(user and user.is_active and user.is_staff)


class HealthDetailsView(APIView):
    """GET /health/details: /health with each failed check's error and every check's time,
    for staff sessions and the holder of MARKETPLACE_HEALTH_TOKEN."""

    authentication_classes = [HealthTokenAuthentication, SessionAuthentication]
    permission_classes = [StaffOrHealthToken]

    @extend_schema(exclude=True)
    def get(self, request: Request) -> Response:
        report = health_report()
        response = Response(report, status=200 if report["ok"] else 503)
        response["Cache-Control"] = "no-store"
        return response


health_details = HealthDetailsView.as_view()


class JwksView(APIView):
    """RFC 7517 JWK Set of every key that still verifies (active and retired), for licenses,
    proofs and the audit log's checkpoints and digests alike, whatever backend holds them.

    Served with a strong ETag (the SHA-256 of the body) and a short public max-age: verifiers
    and CDNs revalidate cheaply with If-None-Match (304), and a revocation or a rotation
    reaches them within minutes."""

    authentication_classes: list[type] = []
    permission_classes = [AllowAny]
    throttle_scope = "jwks"

    @extend_schema(
        summary="Public keys of every non-revoked signer (JWK Set)",
        responses={
            200: OpenApiResponse(JWKS_SCHEMA, description="A JWK Set"),
            304: OpenApiResponse(description="Unchanged since the ETag sent in If-None-Match"),
        },
    )
    def get(self, request: Request) -> HttpResponse:
        document = jwks_of(list(SigningKey.objects.verifying().order_by("created_at", "pk")))
        body = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
        etag = f'"{hashlib.sha256(body).hexdigest()}"'
        if _etag_matches(request.headers.get("If-None-Match", ""), etag):
            response = HttpResponse(status=304)
        else:
            response = HttpResponse(body, content_type="application/json")
        response["ETag"] = etag
        response["Cache-Control"] = f"public, max-age={JWKS_MAX_AGE_SECONDS}"
        return response


# Short enough that a revocation reaches verifiers within minutes.
JWKS_MAX_AGE_SECONDS = 300


def _etag_matches(if_none_match: str, etag: str) -> bool:
    # RFC 9110 13.1.2: If-None-Match uses the weak comparison, and "*" matches any current
    # representation.
    candidates = [part.strip() for part in if_none_match.split(",")]
    return "*" in candidates or etag in {c.removeprefix("W/") for c in candidates}


jwks = JwksView.as_view()


def _is_admin(request: HttpRequest) -> bool:
    return request.path.startswith("/admin/")


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_admin(request):
        return defaults.page_not_found(request, exception)
    return problem_response(request, status=404, detail=f"Nothing is served at {request.path}.")


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_admin(request):
        return defaults.bad_request(request, exception)
    return problem_response(request, status=400, detail="The request could not be understood.")


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_admin(request):
        return defaults.permission_denied(request, exception)
    return problem_response(request, status=403, detail="You are not allowed to do this.")


def server_error(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    # An outage raised in a middleware (a session saved to the database) ends here: it is
    # answered as an outage. Django calls this handler while handling the exception.
    outage = outage_answer(request, sys.exc_info()[1])
    if outage is not None:
        return outage
    if _is_admin(request):
        return defaults.server_error(request)
    return problem_response(
        request, status=500, detail="An unexpected error occurred; it has been logged."
    )
