import os
from collections.abc import Callable, Iterable
from typing import Any

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def metrics_scrapes_first(app: WsgiApp) -> WsgiApp:
    """Answers a scrape of /metrics that holds the metrics token before Django's request cycle
    (middleware, URL resolution, sessions): it costs the web process the rendering, shared for
    MARKETPLACE_METRICS_CACHE_SECONDS, and nothing else, so scrapers leave the API's threads
    alone (bench/metrics). Any other request, a scrape without the token included, goes to
    Django as usual (its rate limit, its 401 or 403)."""
    from django.conf import settings
    from prometheus_client import CONTENT_TYPE_LATEST

    from marketplace.metrics import exposition, scrape_refusal

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if (
            environ.get("PATH_INFO") != "/metrics"
            or environ.get("REQUEST_METHOD") not in ("GET", "HEAD")
            or settings.METRICS_PORT
            or not settings.METRICS_TOKEN
            or scrape_refusal(environ.get("HTTP_AUTHORIZATION"), environ.get("REMOTE_ADDR"))
        ):
            return app(environ, start_response)
        body = exposition()
        start_response(
            "200 OK",
            [
                ("Content-Type", CONTENT_TYPE_LATEST),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [] if environ["REQUEST_METHOD"] == "HEAD" else [body]

    return application


application = metrics_scrapes_first(get_wsgi_application())
