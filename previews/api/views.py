"""The buyer's side of previews: open one, look at it, end it."""

import re
from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace.api.schema import problem
from previews.api.serializers import PreviewCreatedSerializer, PreviewSerializer
from previews.selectors import preview_get_for_buyer
from previews.services import preview_buyer_end, preview_open, preview_wait

# RFC 7240: `Prefer: wait=N` asks the server to answer within N seconds, here once the sandbox
# is ready (or has failed), capped by MARKETPLACE_PREVIEW_READY_WAIT_SECONDS.
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d{1,4}(?:\.\d{1,3})?)(?:$|[,;\s])", re.I)

PREFER = OpenApiParameter(
    "Prefer",
    location=OpenApiParameter.HEADER,
    required=False,
    type={"type": "string", "maxLength": 200},
    description="`wait=N` (RFC 7240): hold the answer up to N seconds until the session is "
    "ready or has failed (at most MARKETPLACE_PREVIEW_READY_WAIT_SECONDS). Without it the "
    "answer comes at once and the client polls GET.",
)


def prefer_wait(request: Request) -> float | None:
    header = request.headers.get("Prefer", "")
    found = _PREFER_WAIT.search(header) if len(header) <= 200 else None
    return float(found.group(1)) if found else None


def _waited(session: Any, request: Request) -> tuple[Any, dict[str, str]]:
    wait = prefer_wait(request)
    if wait is None:
        return session, {}
    # What is applied is the wait as capped, not the one asked for.
    wait = min(wait, settings.PREVIEW_READY_WAIT_SECONDS)
    return preview_wait(session=session, seconds=wait), {"Preference-Applied": f"wait={wait:g}"}


class PreviewCreateView(APIView):
    @extend_schema(
        summary="Open a preview of a SKU",
        request=None,
        parameters=[
            PREFER,
            OpenApiParameter(
                "Retry-After",
                location=OpenApiParameter.HEADER,
                response=[429, 503],
                type={"type": "integer", "minimum": 1},
                description="Seconds until a place frees (a session of yours or of the pool "
                "expires).",
            ),
        ],
        responses={
            201: PreviewCreatedSerializer,
            404: problem("No such SKU"),
            409: problem("The SKU cannot be previewed (`preview-unavailable`, with `reasons`)"),
            429: problem("Too many previews of yours open or started this hour (`preview-limit`)"),
            503: problem("Every sandbox is in use (`preview-capacity`) or previews are paused"),
        },
    )
    def post(self, request: Request, slug: str) -> Response:
        opened = preview_open(buyer=request.user, sku_slug=slug)
        session, headers = _waited(opened.session, request)
        # Shown once: only the token's hash is kept.
        session.token, session.url = opened.token, opened.url
        headers["Location"] = f"/api/v1/previews/{session.pk}"
        return Response(
            PreviewCreatedSerializer(session).data,
            status=201,
            headers={**headers, "Cache-Control": "no-store"},
        )


class PreviewDetailView(APIView):
    @extend_schema(
        summary="One of your previews",
        parameters=[PREFER],
        responses={200: PreviewSerializer, 404: problem("You have no such preview")},
    )
    def get(self, request: Request, preview_id: Any) -> Response:
        session = preview_get_for_buyer(buyer=request.user, session_id=preview_id)
        session, headers = _waited(session, request)
        return Response(PreviewSerializer(session).data, headers=headers)

    @extend_schema(
        summary="End one of your previews now",
        responses={200: PreviewSerializer, 404: problem("You have no such preview")},
    )
    def delete(self, request: Request, preview_id: Any) -> Response:
        session = preview_buyer_end(buyer=request.user, session_id=preview_id)
        return Response(PreviewSerializer(session).data)
