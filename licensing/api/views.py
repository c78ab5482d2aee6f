"""The buyer's side of licensing: their license, their package and its proof, and the public
license check."""

from collections.abc import Iterator
from typing import Any, BinaryIO

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from licensing import selectors
from licensing.api.serializers import (
    DeliveryKeyInputSerializer,
    DeliveryKeySerializer,
    DeliverySerializer,
    LicenseSerializer,
    ProofSerializer,
    VerdictSerializer,
    VerifyInputSerializer,
)
from licensing.services import (
    buyer_delivery_key_set,
    delivery_access,
    license_verify,
)
from licensing.services.downloads import (
    buyer_delivery_key_delete,
    download_link_check,
    download_session_open,
    download_session_probe,
    download_session_served,
)
from marketplace.api.problems import error_response, problem_response
from marketplace.api.schema import problem
from marketplace.clients import client_ip
from marketplace.exceptions import ApplicationError
from marketplace.ranges import RangeNotSatisfiable, requested_range
from orders.selectors import order_get_for_buyer

NO_STORE = {"Cache-Control": "no-store"}


class OrderLicenseView(APIView):
    @extend_schema(
        summary="The license of one of your orders",
        responses={
            200: LicenseSerializer,
            404: problem("You have no such order"),
            409: problem("Not issued yet (not paid, held, or being issued)"),
        },
    )
    def get(self, request: Request, order_id: Any) -> Response:
        order = order_get_for_buyer(buyer=request.user, order_id=order_id)
        license = selectors.license_for_order(order=order)
        return Response(LicenseSerializer(license).data, headers=NO_STORE)


class LicenseVerifyView(APIView):
    permission_classes = [AllowAny]
    authentication_classes: list[type] = []
    throttle_scope = "license_verify"
    # Nothing of the body is stored, and any string is a verdict (marketplace/api/parsers.py).
    json_nul_allowed = True

    @extend_schema(
        summary="Check a license token online (signature, expiry, revocation)",
        request=VerifyInputSerializer,
        responses={200: VerdictSerializer, 400: problem('The body is not {"token": string}')},
    )
    def post(self, request: Request) -> Response:
        data = VerifyInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        verdict = license_verify(data.validated_data["token"])
        return Response(VerdictSerializer(verdict).data)


class OrderDeliveryView(APIView):
    throttle_scope = "download_link"
    throttle_fail_closed = True  # it writes: refused while rate limits cannot be counted

    @extend_schema(
        summary="Download your package: a time-limited link and the means to decrypt it",
        responses={
            200: DeliverySerializer,
            404: problem("You have no such order"),
            409: problem("The package is not ready yet"),
            410: problem("Refunded, or the download limit is reached"),
            500: problem(
                "delivery-key-unusable: the data key cannot be unwrapped (the platform's "
                "fault; support can regenerate the package)"
            ),
        },
    )
    def get(self, request: Request, order_id: Any) -> Response:
        access = delivery_access(
            order_id=order_id,
            buyer=request.user,
            ip=client_ip(request),
            user_agent=request.META.get("HTTP_USER_AGENT", ""),
        )
        proof = selectors.proof_id_latest(order_id=access.delivery.order_id)
        return Response(DeliverySerializer(access, context={"proof": proof}).data, headers=NO_STORE)


class ProofView(APIView):
    @extend_schema(
        summary="A signed delivery proof of one of your orders",
        responses={200: ProofSerializer, 404: problem("You have no such proof")},
    )
    def get(self, request: Request, proof_id: Any) -> Response:
        proof = selectors.proof_get_for_buyer(buyer=request.user, proof_id=proof_id)
        return Response(ProofSerializer(proof).data)


class DeliveryKeyView(APIView):
    @extend_schema(
        summary="Your registered X25519 delivery key",
        responses={200: DeliveryKeySerializer, 404: problem("You have registered none")},
    )
    def get(self, request: Request) -> Response:
        key = selectors.delivery_key_get(buyer=request.user)
        return Response(DeliveryKeySerializer(key).data)

    @extend_schema(
        summary="Register your X25519 public key: data keys are then sealed to it",
        request=DeliveryKeyInputSerializer,
        responses={200: DeliveryKeySerializer, 400: problem("Not an X25519 public key")},
    )
    def put(self, request: Request) -> Response:
        data = DeliveryKeyInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        key = buyer_delivery_key_set(
            buyer=request.user, public_key=data.validated_data.get("public_key")
        )
        return Response(DeliveryKeySerializer(key).data)

    @extend_schema(summary="Forget your delivery key", responses={204: None})
    def delete(self, request: Request) -> Response:
        buyer_delivery_key_delete(buyer=request.user)
        return Response(status=204)


LINK_METHODS = "GET, HEAD, OPTIONS"
_STREAM_CHUNK = 256 * 1024


class _PackageStream:
    """Bytes `first` to `first + length - 1` of an open package, a chunk at a time. Closing it
    (the server does when the transfer ends, finished or aborted) closes the package and adds
    what was served to the link's session."""

    def __init__(self, package: BinaryIO, *, session_id: Any, first: int, length: int) -> None:
        self._package = package
        self._session_id = session_id
        self._first = first
        self._left = length
        self._served = 0
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        self._package.seek(self._first)
        while self._left > 0:
            chunk = self._package.read(min(_STREAM_CHUNK, self._left))
            if not chunk:
                return
            self._left -= len(chunk)
            self._served += len(chunk)
            yield chunk

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._package.close()
        download_session_served(session_id=self._session_id, bytes_served=self._served)


# The link is the credential and no cookie is read, so there is nothing for CSRF to guard;
# without this, other methods got the CSRF 403 instead of the documented 405.
@csrf_exempt
def package_download(request: HttpRequest, token: str) -> HttpResponse:
    """A platform download link (local files): the link itself is the credential, as a
    presigned S3 URL is. GET serves the package or one byte range of it, and counts the link
    once, however many requests it takes; HEAD and OPTIONS cost nothing."""
    if request.method == "OPTIONS":
        return HttpResponse(headers={"Allow": LINK_METHODS, "Content-Length": "0"})
    if request.method not in ("GET", "HEAD"):
        return problem_response(
            request,
            status=405,
            detail=f"A download link answers {LINK_METHODS}.",
            headers={"Allow": LINK_METHODS},
        )
    try:
        session = download_link_check(token=token)
    except ApplicationError as exc:
        return error_response(request, exc)
    delivery = session.delivery
    size = delivery.package_size or 0
    etag = f'"{delivery.package_sha256}"'
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "X-Package-SHA256": delivery.package_sha256,
        "Cache-Control": "no-store",
        "Content-Type": "application/octet-stream",
        "Content-Disposition": (
            f'attachment; filename="{delivery.order.sku_slug}-{delivery.order_id}.mkpkg"'
        ),
    }
    if request.method == "HEAD":
        # The same status as GET: a package that cannot be read is a 503 here too.
        try:
            download_session_probe(session=session)
        except ApplicationError as exc:
            return error_response(request, exc)
        # A Range has no meaning for HEAD (RFC 9110 §14.2): the whole package's headers.
        return HttpResponse(headers={**headers, "Content-Length": str(size)})
    try:
        wanted = requested_range(request, etag=etag, size=size)
    except RangeNotSatisfiable:
        return problem_response(
            request,
            status=416,
            code="range-not-satisfiable",
            title="The range is not within the package",
            detail=f"The package is {size} bytes; ask for a range that starts before its end.",
            headers={"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes", "ETag": etag},
        )
    try:
        package = download_session_open(
            session=session,
            ip=client_ip(request),
            user_agent=request.META.get("HTTP_USER_AGENT", ""),
        )
    except ApplicationError as exc:
        return error_response(request, exc)
    first, last = wanted or (0, size - 1)
    if wanted is not None:
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    length = last - first + 1
    stream = _PackageStream(package, session_id=session.pk, first=first, length=length)
    response = StreamingHttpResponse(stream, status=206 if wanted else 200, headers=headers)
    response["Content-Length"] = str(length)
    return response
