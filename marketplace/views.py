import hashlib
import json
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views import defaults
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace.api.problems import problem_response
from marketplace.health import health_report
from marketplace.keystore import jwks_of
from marketplace.models import SigningKey


class HealthView(APIView):
    authentication_classes: list[type] = []
    permission_classes = [AllowAny]
    throttle_classes: list[type] = []

    @extend_schema(
        summary="Readiness of the database, cache, broker and storage",
        responses={
            200: OpenApiResponse(description="All checks passed"),
            503: OpenApiResponse(description="At least one check failed"),
        },
    )
    def get(self, request: Request) -> Response:
        report = health_report()
        response = Response(report, status=200 if report["ok"] else 503)
        response["Cache-Control"] = "no-store"
        return response


health = HealthView.as_view()


class JwksView(APIView):
    """RFC 7517 JWK Set of every key that still verifies (active and retired), for licenses,
    proofs and the audit log's checkpoints and digests alike, whatever backend holds them.

    Served with a strong ETag (the SHA-256 of the body) and a short public max-age: verifiers
    and CDNs revalidate cheaply with If-None-Match (304), and a revocation or a rotation
    reaches them within minutes."""

    authentication_classes: list[type] = []
    permission_classes = [AllowAny]
    throttle_classes: list[type] = []

    @extend_schema(
        summary="Public keys of every non-revoked signer (JWK Set)",
        responses={
            200: OpenApiResponse(description="A JWK Set"),
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
    if _is_admin(request):
        return defaults.server_error(request)
    return problem_response(
        request, status=500, detail="An unexpected error occurred; it has been logged."
    )
