"""A buyer's own API tokens: list them, revoke one."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.services import api_token_revoke
from marketplace.actors import Actor
from marketplace.api.schema import problem
from marketplace.exceptions import NotFound
from marketplace.models import ApiToken


class ApiTokenSerializer(serializers.ModelSerializer):
    class Meta:
        model = ApiToken
        fields = ["id", "name", "hint", "created_at", "expires_at", "last_used_at", "revoked_at"]


class ApiTokenListView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        summary="The signed-in buyer's API tokens (never the tokens themselves)",
        responses={200: ApiTokenSerializer(many=True), 401: problem("No valid bearer token")},
    )
    def get(self, request: Request) -> Response:
        tokens = ApiToken.objects.filter(user=request.user).order_by("-created_at", "-id")
        return Response(ApiTokenSerializer(tokens, many=True).data)


class ApiTokenView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        summary="Revoke one of the signed-in buyer's API tokens",
        responses={
            204: None,
            401: problem("No valid bearer token"),
            404: problem("No such token of this buyer"),
        },
    )
    def delete(self, request: Request, token_id: int) -> Response:
        token = ApiToken.objects.filter(user=request.user, pk=token_id).first()
        if token is None:
            raise NotFound("You have no API token with this id.")
        api_token_revoke(token_pk=token.pk, actor=Actor.of_user(request.user))
        return Response(status=204)
