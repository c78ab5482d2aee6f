"""The OpenAPI document says what the server answers (docs/api.md#the-openapi-document): each
statement is checked against the document and, where it can be, against the live answer."""

from typing import Any

import pytest

from marketplace.api.pagination import MAX_PAGE_SIZE
from tests.catalog.factories import CategoryFactory, publish_sku

PROBLEM = "application/problem+json"
METHODS = ("get", "put", "post", "patch", "delete")


@pytest.fixture
def document(api_client) -> dict[str, Any]:
    response = api_client.get("/api/schema/?format=json")
    assert response.status_code == 200
    return response.json()


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def component(document: dict[str, Any], ref: str) -> dict[str, Any]:
    return document["components"]["schemas"][ref.rsplit("/", 1)[-1]]


@pytest.mark.django_db
def test_categories_are_an_object_with_results_as_the_server_answers(api_client, document):
    CategoryFactory(slug="software")
    content = document["paths"]["/api/v1/categories"]["get"]["responses"]["200"]["content"]
    schema = component(document, content["application/json"]["schema"]["$ref"])

    assert schema["type"] == "object"
    assert schema["required"] == ["results"]
    assert schema["properties"]["results"]["type"] == "array"
    category = component(document, schema["properties"]["results"]["items"]["$ref"])
    assert category["properties"]["parent"]["nullable"] is True

    answer = api_client.get("/api/v1/categories").json()
    assert isinstance(answer, dict)
    assert set(answer) == set(schema["properties"])
    assert set(answer["results"][0]) == set(category["properties"])


@pytest.mark.django_db
def test_terms_url_is_a_nullable_uri_and_null_when_no_terms_page_is_given(
    api_client, document, publisher
):
    publish_sku(publisher, slug="alpha")
    terms = component(document, "LicenseTerms")["properties"]["terms_url"]

    assert terms == {
        "type": "string",
        "format": "uri",
        "nullable": True,
        "readOnly": True,
        "description": "null: no terms page is given.",
    }
    assert api_client.get("/api/v1/skus/alpha").json()["license"]["terms_url"] is None


def test_every_error_is_problem_json_with_the_problem_component(document):
    errors = 0
    for path, method, operation in operations(document):
        for status, response in operation["responses"].items():
            if int(status) < 400 or status == "414" or (path, status) == ("/health", "503"):
                continue  # 414 is gunicorn's own page; /health's 503 is its report
            errors += 1
            assert response["content"] == {
                PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}
            }, (method, path, status)
    assert errors > 50

    problem = document["components"]["schemas"]["Problem"]
    assert problem["required"] == ["detail", "status", "title", "type"]
    assert {"code", "instance", "errors", "retry_after"} <= set(problem["properties"])
    assert problem["additionalProperties"] is True  # members of a problem's own


def test_every_operation_that_reads_a_bearer_token_documents_its_401(document):
    authenticated = 0
    for path, method, operation in operations(document):
        if not any("bearerAuth" in requirement for requirement in operation["security"]):
            assert "401" not in operation["responses"], (method, path)
            continue
        authenticated += 1
        unauthorized = operation["responses"]["401"]
        assert unauthorized["headers"]["WWW-Authenticate"] == {
            "$ref": "#/components/headers/WWWAuthenticate"
        }, (method, path)
    assert authenticated >= 14
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    provider = document["components"]["securitySchemes"]["providerToken"]
    assert (provider["scheme"], provider["bearerFormat"]) == ("bearer", "JWT")
    # The buyer's own answers need a token, either kind; the catalog takes one but does not
    # need it.
    assert document["paths"]["/api/v1/orders"]["get"]["security"] == [
        {"providerToken": []},
        {"bearerAuth": []},
    ]
    assert {} in document["paths"]["/api/v1/skus"]["get"]["security"]


def test_rate_limited_operations_document_429_with_retry_after(document):
    for path, method, operation in operations(document):
        for status in ("429", "503"):
            response = operation["responses"].get(status)
            if response is None or (path == "/health" and status == "503"):
                continue
            assert response["headers"]["Retry-After"] == {
                "$ref": "#/components/headers/RetryAfter"
            }, (method, path, status)
    assert document["components"]["headers"]["RetryAfter"]["required"] is True
    assert "429" in document["paths"]["/api/v1/checkout"]["post"]["responses"]
    assert "429" in document["paths"]["/api/v1/licenses/verify"]["post"]["responses"]


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/v1/skus", "/api/v1/partners", "/api/v1/orders"])
def test_page_size_bounds_are_the_ones_the_server_enforces(buyer_client, document, path):
    (page_size,) = [
        p for p in document["paths"][path]["get"]["parameters"] if p["name"] == "page_size"
    ]
    assert page_size["schema"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": MAX_PAGE_SIZE,
        "default": 20,
    }
    for size, status in [(0, 400), (1, 200), (MAX_PAGE_SIZE, 200), (MAX_PAGE_SIZE + 1, 400)]:
        assert buyer_client.get(f"{path}?page_size={size}").status_code == status, size


def test_filters_carry_their_bounds_and_choices(document):
    parameters = {p["name"]: p for p in document["paths"]["/api/v1/skus"]["get"]["parameters"]}

    assert parameters["q"]["schema"]["maxLength"] == 200
    assert parameters["min_price"]["schema"] == {
        "type": "integer",
        "format": "int64",
        "minimum": 0,
        "maximum": 2**63 - 1,
    }
    assert {"USD", "EUR", "JPY"} <= set(parameters["currency"]["schema"]["enum"])
    assert set(parameters["ordering"]["schema"]["enum"]) == {
        "created", "-created", "price", "-price", "title", "-title", "relevance"
    }  # fmt: skip
    # An empty value leaves a filter out, as the server does.
    assert all(parameters[name]["allowEmptyValue"] for name in ("q", "currency", "ordering"))
    assert "allowEmptyValue" not in parameters["cursor"]


def test_request_bodies_refuse_unknown_members_as_the_server_does(document):
    bodies = {
        (path, method): operation["requestBody"]["content"]["application/json"]["schema"]
        for path, method, operation in operations(document)
        if "requestBody" in operation
    }
    assert set(bodies) == {
        ("/api/v1/checkout", "post"),
        ("/api/v1/licenses/verify", "post"),
        ("/api/v1/me/delivery-key", "put"),
    }
    for (path, method), schema in bodies.items():
        assert component(document, schema["$ref"])["additionalProperties"] is False, path
        responses = document["paths"][path][method]["responses"]
        assert {"400", "413", "415"} <= set(responses), path

    key = document["paths"]["/api/v1/checkout"]["post"]["parameters"][0]
    assert key["name"] == "Idempotency-Key"
    assert (key["schema"]["minLength"], key["schema"]["maxLength"]) == (1, 255)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/api/v1/checkout", {"sku": "alpha", "quantity": 2}),
        ("post", "/api/v1/licenses/verify", {"token": "x", "kid": "y"}),
        ("put", "/api/v1/me/delivery-key", {"public_key": "x", "name": "laptop"}),
    ],
)
def test_an_unknown_member_of_a_body_is_a_400_naming_it(buyer_client, method, path, body):
    response = getattr(buyer_client, method)(
        path, body, format="json", HTTP_IDEMPOTENCY_KEY="key-1"
    )

    assert response.status_code == 400
    assert response["Content-Type"] == PROBLEM
    unknown = (set(body) - {"sku", "token", "public_key"}).pop()
    assert unknown in response.json()["errors"]


def test_ids_and_times_have_their_formats(document):
    schemas = document["components"]["schemas"]
    assert schemas["Order"]["properties"]["id"]["format"] == "uuid"
    assert schemas["Order"]["properties"]["proof"] == {
        "type": "string",
        "format": "uuid",
        "nullable": True,
        "readOnly": True,
        "description": "The id of the signed delivery proof (GET /api/v1/proofs/{id}), once "
        "delivered.",
    }
    assert schemas["Order"]["properties"]["created_at"]["format"] == "date-time"
    for path in ("/api/v1/orders/{order_id}", "/api/v1/proofs/{proof_id}"):
        (parameter,) = document["paths"][path]["get"]["parameters"]
        assert parameter["schema"]["format"] == "uuid"


@pytest.mark.django_db
def test_a_body_too_deep_is_said_to_be_a_400_and_too_large_a_413(buyer_client, document):
    responses = document["paths"]["/api/v1/checkout"]["post"]["responses"]
    deep = buyer_client.post(
        "/api/v1/checkout",
        "[" * 200 + "]" * 200,
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="deep-1",
    )

    assert deep.status_code == 400
    assert deep.json()["code"] == "json-too-deep"
    assert "deeper" in responses["400"]["description"]
    assert "json-too-deep" in responses["400"]["description"]
    assert "deeper" not in responses["413"]["description"]
