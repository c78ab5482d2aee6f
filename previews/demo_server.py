"""Serve the working directory read-only over HTTP: on the Unix socket named by PREVIEW_SOCKET
(the local provisioner), or on the TCP port PREVIEW_PORT (the Kubernetes provisioner).

Runs inside a preview sandbox as ``/usr/bin/python3 -I -B /sandbox-bin/demo_server.py``, so it
uses the standard library only. ``python3 -m http.server`` cannot bind a Unix socket.
"""

import http.server
import os
import socketserver


class Handler(http.server.SimpleHTTPRequestHandler):
    # GET and HEAD only: SimpleHTTPRequestHandler has no handler that writes.

    def address_string(self) -> str:
        return "preview-socket"  # a Unix socket peer has no address; the default would fail


def main() -> None:
    port = os.environ.get("PREVIEW_PORT")
    if port:
        with socketserver.ThreadingTCPServer(("", int(port)), Handler) as server:
            server.daemon_threads = True
            server.serve_forever()
        return
    path = os.environ["PREVIEW_SOCKET"]
    if os.path.exists(path):
        os.unlink(path)
    with socketserver.ThreadingUnixStreamServer(path, Handler) as server:
        server.daemon_threads = True
        server.serve_forever()


if __name__ == "__main__":
    main()
