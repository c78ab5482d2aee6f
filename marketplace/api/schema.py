"""OpenAPI pieces shared by every API: the problem-details body of an error."""

from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers


class ProblemSerializer(serializers.Serializer):
    type = serializers.CharField(help_text="urn:marketplace:problem:<code>, or about:blank.")
    title = serializers.CharField()
    status = serializers.IntegerField()
    detail = serializers.CharField()
    code = serializers.CharField(required=False)
    instance = serializers.CharField(required=False)
    errors = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="Messages per invalid field or query parameter.",
    )


def problem(description: str) -> OpenApiResponse:
    return OpenApiResponse(
        ProblemSerializer, description=f"{description} (application/problem+json)"
    )
