"""The buyer's side of licensing: their license, their package and its proof, and the public
license check."""

from typing import Any

from django.http import FileResponse, HttpRequest, HttpResponse
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
    download_link_open,
    license_verify,
)
from licensing.services.downloads import buyer_delivery_key_delete
from marketplace.api.problems import error_response
from marketplace.api.schema import problem
from marketplace.exceptions import ApplicationError
from orders.selectors import order_get_for_buyer

NO_STORE = {"Cache-Control": "no-store"}


def _client_ip(request: Request | HttpRequest) -> str | None:
    return request.META.get("REMOTE_ADDR")


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
    @extend_schema(
        summary="Download your package: a time-limited link and the means to decrypt it",
        responses={
            200: DeliverySerializer,
            404: problem("You have no such order"),
            409: problem("The package is not ready yet"),
            410: problem("Refunded, or the download limit is reached"),
        },
    )
    def get(self, request: Request, order_id: Any) -> Response:
        access = delivery_access(
            order_id=order_id,
            buyer=request.user,
            ip=_client_ip(request),
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
        summary="Your registered X25519 delivery key", responses={200: DeliveryKeySerializer}
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


def package_download(request: HttpRequest, token: str) -> HttpResponse:
    """A platform download link (local files): the link itself is the credential, as a
    presigned S3 URL is."""
    try:
        delivery, package = download_link_open(
            token=token,
            ip=_client_ip(request),
            user_agent=request.META.get("HTTP_USER_AGENT", ""),
        )
    except ApplicationError as exc:
        return error_response(request, exc)
    response = FileResponse(
        package,
        as_attachment=True,
        filename=f"{delivery.order.sku_slug}-{delivery.order_id}.mkpkg",
        content_type="application/octet-stream",
    )
    response["Cache-Control"] = "no-store"
    response["X-Package-SHA256"] = delivery.package_sha256
    return response
