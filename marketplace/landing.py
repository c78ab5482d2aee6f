"""`/`: a page for whoever opens the platform's address, linking what there is to see.

It reads nothing but the URL configuration (no database, no session, no sign-in), so it is the
same for everyone and may be cached. `Accept: application/json` gets the same links as JSON.
"""

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.cache import patch_cache_control, patch_vary_headers
from django.views.decorators.http import require_safe

CACHE_SECONDS = 300

# (key in the JSON index, URL name, title, what it is)
LINKS = (
    ("api_docs", "api-docs", "API docs", "the JSON API, browsable (OpenAPI 3)"),
    ("skus", "sku-list", "Catalog", "the SKUs on sale, as JSON"),
    ("admin", "admin:index", "Admin", "for staff: the catalog, orders, keys and the audit log"),
    ("health", "health", "Health", "readiness of the database, cache, broker and storage"),
    ("jwks", "jwks", "Public keys", "the JWK Set that verifies licenses, proofs and audit exports"),
)


@require_safe
def landing(request: HttpRequest) -> HttpResponse:
    links = [(key, reverse(name), title, what) for key, name, title, what in LINKS]
    preferred = request.get_preferred_type(["text/html", "application/json"])
    if preferred == "application/json":
        response: HttpResponse = JsonResponse(
            {"name": "Marketplace", "links": {key: url for key, url, _, _ in links}}
        )
    else:
        # Rendered without the request: no context processor runs, so no session or user is
        # read and the page stays the same for everyone.
        response = HttpResponse(render_to_string("marketplace/landing.html", {"links": links}))
    patch_cache_control(response, public=True, max_age=CACHE_SECONDS)
    patch_vary_headers(response, ["Accept"])
    return response
