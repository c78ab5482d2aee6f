"""GET /: a small HTML page linking the API docs, the catalog, the admin, the health check and
the public keys, or the same links as JSON for `Accept: application/json`; public, cacheable,
no sign-in, no database query (the tests of the page have no `django_db` mark: a query would
fail them)."""

import re

import pytest
from django.test import Client

LINKS = {
    "api_docs": "/api/docs/",
    "skus": "/api/v1/skus",
    "admin": "/admin/",
    "health": "/health",
    "jwks": "/.well-known/jwks.json",
}


@pytest.mark.parametrize("accept", [None, "text/html,application/xhtml+xml,*/*;q=0.8", "*/*"])
def test_a_browser_or_curl_gets_the_page_of_links(accept):
    headers = {"Accept": accept} if accept else {}
    response = Client().get("/", headers=headers)

    assert response.status_code == 200
    assert response["Content-Type"] == "text/html; charset=utf-8"
    assert response["Cache-Control"] == "public, max-age=300"
    assert "Accept" in response["Vary"]
    assert "Cookie" not in response.get("Vary", "")
    assert "Set-Cookie" not in response.headers
    html = response.content.decode()
    assert "<title>Marketplace</title>" in html
    assert set(re.findall(r'<a href="([^"]+)"', html)) == set(LINKS.values())


def test_json_clients_get_an_index_of_the_same_links():
    response = Client().get("/", headers={"Accept": "application/json"})

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response["Cache-Control"] == "public, max-age=300"
    assert "Accept" in response["Vary"]
    assert response.json() == {"name": "Marketplace", "links": LINKS}


@pytest.mark.django_db
def test_every_link_answers(admin_client):
    # The signed-in admin client, so that /admin/ answers 200 rather than a redirect to log in.
    for url in LINKS.values():
        response = admin_client.get(url)
        assert response.status_code == 200, url


@pytest.mark.django_db
def test_the_paths_next_to_it_still_reach_their_own_views(client):
    assert client.get("/metrics").status_code == 200
    assert client.get("/checkout/success").status_code == 200
    assert client.get("/nothing-here")["Content-Type"] == "application/problem+json"


def test_it_only_reads(client):
    response = client.post("/")

    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"


@pytest.mark.django_db
def test_it_is_the_same_page_for_a_signed_in_member_of_staff(admin_client, client):
    signed_in, anonymous = admin_client.get("/"), client.get("/")

    assert signed_in.content == anonymous.content
    assert "Cookie" not in signed_in["Vary"]
