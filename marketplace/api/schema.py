"""The OpenAPI document, made to say what the server answers (docs/api.md#the-openapi-document).

Each view declares what is its own (its success body, the domain errors it raises). What every
view of a kind answers is added here once, from the view itself: 401 where it reads a bearer
token, 429 where it is rate limited, 400/413/415 where it takes a body or parameters, 404 where
its path names an object, and 503 for an outage. Every error is `application/problem+json`
with the Problem component; parameters carry the bounds the server enforces; request bodies
refuse unknown members (`additionalProperties: false`).
"""

from typing import Any

from django import forms
from django.core.validators import slug_re
from django_filters import rest_framework as filters
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers
from rest_framework.permissions import AllowAny

from marketplace.api.pagination import MAX_PAGE_SIZE, SignedCursorPagination
from marketplace.api.problems import PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_PREFIX
from marketplace.money import currency_codes
from marketplace.ratelimit import PATH_LIMITS

PROBLEM_REF = "#/components/schemas/Problem"
SLUG_PATTERN = slug_re.pattern.replace(r"\Z", "$")
# The response headers every operation of a kind sends, once in components.headers.
SHARED_HEADERS = {
    "RetryAfter": {
        "schema": {"type": "integer", "minimum": 0},
        "required": True,
        "description": "Seconds to wait before trying again.",
    },
    "WWWAuthenticate": {
        "schema": {"type": "string"},
        "required": True,
        "description": 'The scheme to use: `Bearer realm="marketplace"`.',
    },
}


class ProblemSerializer(serializers.Serializer):
    """RFC 9457 problem details (marketplace.api.problems.problem_body)."""

    type = serializers.CharField(
        help_text=f"`{PROBLEM_TYPE_PREFIX}<code>`, or `about:blank` for a URL that matches "
        "nothing and for an unexpected error."
    )
    title = serializers.CharField()
    status = serializers.IntegerField(min_value=400, max_value=599)
    detail = serializers.CharField(help_text="What was wrong and what to do.")
    code = serializers.CharField(
        required=False, help_text="The problem's code, e.g. `invalid-input`, `sku-not-found`."
    )
    instance = serializers.CharField(required=False, help_text="The path that was asked for.")
    errors = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="Messages per invalid field, header or query parameter.",
    )
    retry_after = serializers.IntegerField(
        required=False, help_text="Seconds to wait, as in the Retry-After header."
    )
    reason = serializers.CharField(required=False, help_text="Why a download is gone.")
    delivery = serializers.CharField(required=False, help_text="Where the delivery stands.")
    sku = serializers.CharField(required=False, help_text="The SKU's slug.")
    sku_status = serializers.CharField(required=False, help_text="Why the SKU is not for sale.")
    limit = serializers.CharField(required=False, help_text="The rate limit that was reached.")
    max_bytes = serializers.IntegerField(required=False, help_text="The largest body taken.")
    max_depth = serializers.IntegerField(required=False, help_text="The deepest nesting taken.")
    pointer = serializers.CharField(
        required=False, help_text="RFC 6901 pointer to what a body may not hold."
    )


def problem(description: str) -> OpenApiResponse:
    """An error response of one operation, rendered as `application/problem+json`."""
    return OpenApiResponse(ProblemSerializer, description=description)


def _slug_like(model_field: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "pattern": SLUG_PATTERN}
    if getattr(model_field, "max_length", None):
        schema["maxLength"] = model_field.max_length
    return schema


def _filter_bounds(flt: filters.Filter) -> dict[str, Any]:
    """The schema of what a django-filter filter's form field accepts."""
    field = flt.field
    if isinstance(flt, filters.ModelChoiceFilter):
        model = flt.queryset.model if flt.queryset is not None else None
        name = flt.extra.get("to_field_name") or "pk"
        return _slug_like(model._meta.get_field(name)) if model else {"type": "string"}
    if isinstance(field, forms.IntegerField):
        schema: dict[str, Any] = {"type": "integer", "format": "int64"}
        if field.min_value is not None:
            schema["minimum"] = field.min_value
        if field.max_value is not None:
            schema["maximum"] = field.max_value
        return schema
    if flt.__class__.__name__ == "CurrencyFilter":
        return {"type": "string", "enum": sorted(currency_codes())}
    if isinstance(field, forms.ChoiceField):
        return {"type": "string", "enum": [value for value, _ in field.choices if value != ""]}
    schema = {"type": "string"}
    if getattr(field, "max_length", None):
        schema["maxLength"] = field.max_length
    return schema


def _path_limited(path: str, method: str) -> bool:
    """Whether the rate-limit middleware counts this path (marketplace.ratelimit)."""
    return any(limit.counts(path, method) for limit in PATH_LIMITS)


class MarketplaceAutoSchema(AutoSchema):
    def _get_parameters(self) -> list[dict[str, Any]]:
        parameters = super()._get_parameters()
        filterset = getattr(self.view, "filterset_class", None)
        declared = filterset.base_filters if filterset else {}
        for parameter in parameters:
            if parameter["in"] != "query":
                continue
            if parameter["name"] in declared:
                bounds = _filter_bounds(declared[parameter["name"]])
                parameter["schema"] = {**parameter.get("schema", {}), **bounds}
                if "enum" in bounds:  # drf-spectacular's own list, now in the schema
                    parameter.pop("description", None)
                    description = declared[parameter["name"]].extra.get("help_text")
                    if description:
                        parameter["description"] = str(description)
                # An empty value leaves the filter out, as if it were not sent.
                parameter["allowEmptyValue"] = True
            elif parameter["name"] == SignedCursorPagination.page_size_query_param:
                parameter["schema"] = {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_PAGE_SIZE,
                    "default": SignedCursorPagination.page_size,
                }
        return parameters

    def _get_response_bodies(self, direction: str = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        for status, description in self._shared_errors(responses).items():
            responses.setdefault(status, self._get_response_for_code(problem(description), status))
        if self._has_body() and "400" in responses:
            # The JSON parser's own 400, whatever the view's 400 says of its input.
            responses["400"]["description"] += (
                "; or a body nested deeper than the API accepts (`json-too-deep`, with `max_depth`)"
            )
        if any(p["in"] in ("query", "path") for p in self._get_parameters()):
            # gunicorn answers this itself, before the platform sees the request.
            responses.setdefault(
                "414",
                {
                    "description": "The request line is over 4,094 bytes (the HTTP server's "
                    "own page)",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                },
            )
        for status, response in responses.items():
            if int(status) < 400:
                continue
            content = response.get("content") or {}
            schemas = [media.get("schema") for media in content.values()]
            if not schemas or any(schema != {"$ref": PROBLEM_REF} for schema in schemas):
                continue  # not a problem (the health report's 503)
            response["content"] = {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": PROBLEM_REF}}}
            headers = response.setdefault("headers", {})
            if status == "401":
                headers["WWW-Authenticate"] = {"$ref": "#/components/headers/WWWAuthenticate"}
            if status in ("429", "503"):
                headers["Retry-After"] = {"$ref": "#/components/headers/RetryAfter"}
            if not headers:
                del response["headers"]
        return dict(sorted(responses.items()))

    def _has_body(self) -> bool:
        return self.method in ("POST", "PUT", "PATCH") and bool(self.get_request_serializer())

    def _shared_errors(self, responses: dict[str, Any]) -> dict[str, str]:
        view = self.view
        errors: dict[str, str] = {}
        has_body = self._has_body()
        takes_input = has_body or any(
            p["in"] in ("query", "header") for p in self._get_parameters()
        )
        if takes_input:
            errors["400"] = "Invalid input: the problem's `errors` names each field or parameter"
        if view.get_authenticators():
            if any(isinstance(p, AllowAny) for p in view.get_permissions()):
                errors["401"] = "A bearer token was sent that is unknown, expired or revoked"
            else:
                errors["401"] = "No bearer token, or one that is unknown, expired or revoked"
        if "{" in self.path:
            errors["404"] = "Nothing at this path, or nothing of yours"
        if has_body:
            errors["413"] = "The body is larger than the API accepts (`max_bytes`)"
            errors["415"] = "The body is not `application/json`"
        if view.get_throttles() or _path_limited(self.path, self.method):
            errors["429"] = "Too many requests from you: wait for Retry-After seconds"
        errors["503"] = "A service the platform needs is down: try again after Retry-After"
        return {status: text for status, text in errors.items() if status not in responses}


def postprocess(result: dict[str, Any], generator: Any, request: Any, public: bool) -> Any:
    """What drf-spectacular cannot see from the serializers: request bodies refuse unknown
    members (each input serializer names an unknown field in a 400), and a problem may carry
    members of its own."""
    schemas = result.get("components", {}).get("schemas", {})
    for name, schema in schemas.items():
        if name.endswith("Request") and schema.get("type") == "object":
            schema["additionalProperties"] = False
    if "Problem" in schemas:
        schemas["Problem"]["additionalProperties"] = True
    result.setdefault("components", {})["headers"] = SHARED_HEADERS
    return result


# GET /health's public body (marketplace.health.health_public), for 200 and 503 alike.
HEALTH_SCHEMA = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "checks": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": {"ok": {"type": "boolean"}},
                "required": ["ok"],
            },
            "description": "Each check by name (database, cache, broker, storage, ...).",
        },
        "failed": {"type": "array", "items": {"type": "string"}},
        "signingConfigured": {"type": "boolean"},
    },
    "required": ["ok", "checks"],
}

# RFC 7517 JWK Set (marketplace.keystore.jwks_of).
JWKS_SCHEMA = {
    "type": "object",
    "properties": {
        "keys": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "kty": {"type": "string"},
                    "kid": {"type": "string"},
                    "crv": {"type": "string"},
                    "x": {"type": "string"},
                    "y": {"type": "string"},
                    "alg": {"type": "string"},
                    "use": {"type": "string"},
                },
                "required": ["kty", "kid"],
            },
        }
    },
    "required": ["keys"],
}
