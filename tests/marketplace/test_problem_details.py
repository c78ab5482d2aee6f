import pytest
from django.test import Client

PROBLEM = "application/problem+json"
pytestmark = pytest.mark.django_db


def test_unknown_url_is_a_404_problem(api_client):
    response = api_client.get("/api/v1/nothing-here")

    assert response.status_code == 404
    assert response["Content-Type"] == PROBLEM
    assert response.json() == {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": "Nothing is served at /api/v1/nothing-here.",
        "instance": "/api/v1/nothing-here",
    }


def test_wrong_method_is_a_405_problem(api_client):
    response = api_client.delete("/api/v1/skus")

    assert response.status_code == 405
    assert response["Content-Type"] == PROBLEM
    body = response.json()
    assert body["status"] == 405
    assert body["title"] == "Method Not Allowed"
    assert body["type"] == "urn:marketplace:problem:method-not-allowed"
    assert "DELETE" in body["detail"]


def test_health_wrong_method_is_a_405_problem(api_client):
    response = api_client.post("/health")
    assert response.status_code == 405
    assert response["Content-Type"] == PROBLEM


@pytest.mark.urls("tests.marketplace.urls_errors")
def test_domain_error_carries_its_code_and_extra_members(api_client):
    response = api_client.get("/domain")

    assert response.status_code == 409
    assert response["Content-Type"] == PROBLEM
    assert response.json() == {
        "type": "urn:marketplace:problem:conflict",
        "title": "The request conflicts with the current state",
        "status": 409,
        "detail": "The order is already paid.",
        "code": "conflict",
        "instance": "/domain",
        "order": "abc",
    }


@pytest.mark.urls("tests.marketplace.urls_errors")
def test_django_validation_error_lists_errors_per_field(api_client):
    response = api_client.get("/django-validation")

    assert response.status_code == 400
    assert response.json()["errors"] == {
        "email": ["Enter a valid email."],
        "non_field_errors": ["Broken."],
    }


@pytest.mark.urls("tests.marketplace.urls_errors")
def test_django_permission_denied_is_a_403_problem(api_client):
    response = api_client.get("/denied")
    assert response.status_code == 403
    assert response["Content-Type"] == PROBLEM


@pytest.mark.urls("tests.marketplace.urls_errors")
def test_unexpected_error_is_a_500_problem_without_internals():
    client = Client(raise_request_exception=False)
    response = client.get("/crash")

    assert response.status_code == 500
    assert response["Content-Type"] == PROBLEM
    body = response.json()
    assert body["status"] == 500
    assert "boom" not in body["detail"]


def test_admin_errors_stay_html(client, content_ops):
    client.force_login(content_ops)
    response = client.get("/admin/catalog/sku/999999/change/", follow=True)
    assert response.status_code == 200  # the admin redirects to its index with a message
    response = client.get("/admin/no-such-page/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")
