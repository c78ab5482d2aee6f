"""The buyer's side of licensing: their license, their package and its proof, and the public
license check."""

from typing import Any

from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse
from drf_spectacular.utils import extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from licensing.api.serializers import (
    DeliveryKeySerializer,
    DeliverySerializer,
    LicenseSerializer,
    ProofSerializer,
    VerdictSerializer,
    VerifyInputSerializer,
)
from licensing.models import BuyerDeliveryKey, License, LicenseStatus, Proof
from licensing.services import (
    buyer_delivery_key_set,
    delivery_access,
    download_link_open,
    license_verify,
)
from licensing.services.downloads import buyer_delivery_key_delete
from marketplace.api.problems import PROBLEM_CONTENT_TYPE, problem_body
from marketplace.api.schema import problem
from marketplace.exceptions import ApplicationError, Conflict, NotFound
from orders.selectors import order_get_for_buyer

NO_STORE = {"Cache-Control": "no-store"}


def _client_ip(request: Request | HttpRequest) -> str | None:
    return request.META.get("REMOTE_ADDR")


class LicenseNotIssued(Conflict):
    code = "license-not-issued"
    title = "The license is not issued yet"


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
        license = (
            License.objects.filter(order=order, status=LicenseStatus.ACTIVE).first()
            or License.objects.filter(order=order).order_by("-issued_at").first()
        )
        if license is None:
            raise LicenseNotIssued(
                f"Order {order.id} has no license yet ({order.delivery_state}).",
                extra={"delivery": order.delivery_state},
            )
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
        return Response(
            {
                "valid": verdict.valid,
                "reason": verdict.reason,
                "license": verdict.claims if verdict.claims is not None else None,
            }
        )


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
        delivery = access.delivery
        proof = Proof.objects.filter(delivery=delivery).values_list("pk", flat=True).first()
        return Response(
            {
                "download_url": access.download_url,
                "expires_at": access.expires_at,
                "sha256": delivery.package_sha256,
                "artifact_sha256": delivery.artifact_sha256,
                "format": delivery.format,
                "size": delivery.package_size,
                "decryption_key": access.decryption_key,
                "wrapped_key": access.wrapped_key,
                "downloads_left": access.downloads_left,
                "proof": proof,
            },
            headers=NO_STORE,
        )


class ProofView(APIView):
    @extend_schema(
        summary="A signed delivery proof of one of your orders",
        responses={200: ProofSerializer, 404: problem("You have no such proof")},
    )
    def get(self, request: Request, proof_id: Any) -> Response:
        proof = Proof.objects.filter(pk=proof_id, order__buyer=request.user).first()
        if proof is None:
            raise NotFound(f"You have no proof {proof_id}.")
        return Response(ProofSerializer(proof).data)


class DeliveryKeyView(APIView):
    @extend_schema(
        summary="Your registered X25519 delivery key", responses={200: DeliveryKeySerializer}
    )
    def get(self, request: Request) -> Response:
        key = BuyerDeliveryKey.objects.filter(buyer=request.user).first()
        if key is None:
            raise NotFound("You have not registered a delivery key.")
        return Response({"public_key": key.public_key, "updated_at": key.updated_at})

    @extend_schema(
        summary="Register your X25519 public key: data keys are then sealed to it",
        request=DeliveryKeySerializer,
        responses={200: DeliveryKeySerializer, 400: problem("Not an X25519 public key")},
    )
    def put(self, request: Request) -> Response:
        if not isinstance(request.data, dict):
            raise ValidationError({"non_field_errors": ['Send a JSON object {"public_key": ...}.']})
        unknown = sorted(set(request.data) - {"public_key"})
        if unknown:
            raise ValidationError(
                {field: ["Unknown field; the body takes only `public_key`."] for field in unknown}
            )
        key = buyer_delivery_key_set(buyer=request.user, public_key=request.data.get("public_key"))
        return Response({"public_key": key.public_key, "updated_at": key.updated_at})

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
        return JsonResponse(
            problem_body(
                status=exc.status,
                code=exc.code,
                title=exc.title,
                detail=exc.detail,
                instance=request.path,
                extra=exc.extra,
            ),
            status=exc.status,
            content_type=PROBLEM_CONTENT_TYPE,
        )
    response = FileResponse(
        package,
        as_attachment=True,
        filename=f"{delivery.order.sku_slug}-{delivery.order_id}.mkpkg",
        content_type="application/octet-stream",
    )
    response["Cache-Control"] = "no-store"
    response["X-Package-SHA256"] = delivery.package_sha256
    return response
