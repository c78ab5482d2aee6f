"""Serves /metrics on a listener of its own: MARKETPLACE_METRICS_ADDR:MARKETPLACE_METRICS_PORT.

A process apart from the web server, so that scrapes never take the API's threads or its GIL;
it reads the metrics every process writes to PROMETHEUS_MULTIPROC_DIR, which it must share
with the web server and the workers. The same rules as the web server's /metrics apply: the
token when MARKETPLACE_METRICS_TOKEN is set, one rendering per MARKETPLACE_METRICS_CACHE_SECONDS.
"""

import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from prometheus_client import CONTENT_TYPE_LATEST

from marketplace.api.problems import PROBLEM_CONTENT_TYPE
from marketplace.metrics import exposition, multiprocess_dir, problem_bytes, scrape_refusal


class MetricsHandler(BaseHTTPRequestHandler):
    # A client that sends nothing does not hold a thread for long.
    timeout = 10

    def do_GET(self) -> None:
        self._answer(with_body=True)

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def _answer(self, *, with_body: bool) -> None:
        path = urlsplit(self.path).path
        headers: dict[str, str] = {"Cache-Control": "no-store"}
        if path != "/metrics":
            status, body = 404, problem_bytes(404, "Only /metrics is served here.", path)
            headers["Content-Type"] = PROBLEM_CONTENT_TYPE
        elif refusal := scrape_refusal(
            self.headers.get("Authorization"), self.client_address[0], own_listener=True
        ):
            status, body = refusal.status, problem_bytes(refusal.status, refusal.detail, path)
            headers["Content-Type"] = PROBLEM_CONTENT_TYPE
            if refusal.www_authenticate:
                headers["WWW-Authenticate"] = refusal.www_authenticate
        else:
            status, body = 200, exposition()
            headers["Content-Type"] = CONTENT_TYPE_LATEST
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape is noise; refusals show in the scrape's own status


class Command(BaseCommand):
    help = (
        "Serve /metrics on MARKETPLACE_METRICS_ADDR:MARKETPLACE_METRICS_PORT, from the files in "
        "PROMETHEUS_MULTIPROC_DIR, until stopped."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--nice",
            type=int,
            default=10,
            help="lower this process's CPU priority by this much (0: as the web server), so "
            "that the API keeps the CPU when scrapes and requests compete for it",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.METRICS_PORT:
            raise CommandError("Set MARKETPLACE_METRICS_PORT: the port to serve /metrics on.")
        if not multiprocess_dir():
            raise CommandError(
                "Set PROMETHEUS_MULTIPROC_DIR to the folder the web server and the workers "
                "write their metrics to: without it this process would show only its own."
            )
        if options["nice"]:
            os.nice(options["nice"])
        server = ThreadingHTTPServer((settings.METRICS_ADDR, settings.METRICS_PORT), MetricsHandler)
        server.daemon_threads = True
        host, port = server.server_address[:2]
        self.stdout.write(f"Serving /metrics on http://{host}:{port}/metrics", ending="\n")
        self.stdout.flush()
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
