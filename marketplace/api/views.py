from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace.api.schema import problem
from marketplace.models import User


class MeSerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(source="uuid")

    class Meta:
        model = User
        fields = ["id", "email", "display_name", "date_joined"]


class MeView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        summary="The signed-in buyer",
        responses={200: MeSerializer, 401: problem("No valid bearer token")},
    )
    def get(self, request: Request) -> Response:
        return Response(MeSerializer(request.user).data)
