"""The web server's access log names no preview or download token."""

from datetime import timedelta
from types import SimpleNamespace

from gunicorn.config import Config

from config.gunicorn_logging import RedactingLogger

TOKEN = "jOsPIJIJCHGNPvi0iPN9JXuE2OLKqKgcK-HeP8WVM3w"


def test_tokens_in_paths_and_referers_are_redacted_in_the_access_log():
    logger = RedactingLogger(Config())
    environ = {
        "REQUEST_METHOD": "GET",
        "RAW_URI": f"/previews/{TOKEN}/style.css?x=1",
        "PATH_INFO": f"/previews/{TOKEN}/style.css",
        "QUERY_STRING": "x=1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_REFERER": f"https://api.example/marketplace/deliveries/{TOKEN}",
        "REMOTE_ADDR": "127.0.0.1",
    }
    request = SimpleNamespace(headers=[("REFERER", environ["HTTP_REFERER"])])
    response = SimpleNamespace(status="200 OK", headers=[], sent=10)

    atoms = logger.atoms(response, request, environ, timedelta(milliseconds=3))

    assert atoms["r"] == "GET /previews/[redacted]/style.css?x=1 HTTP/1.1"
    assert atoms["U"] == "/previews/[redacted]/style.css"
    assert atoms["f"] == "https://api.example/marketplace/deliveries/[redacted]"
    assert atoms["{referer}i"] == "https://api.example/marketplace/deliveries/[redacted]"
    assert TOKEN not in repr(atoms)
    assert atoms["s"] == "200"
