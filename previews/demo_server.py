"""Serve the working directory read-only over HTTP: on the listening socket the sandbox hands it
(the file descriptor in PREVIEW_LISTEN_FD: the local provisioner), or on the TCP port PREVIEW_PORT
(the Kubernetes provisioner).

Runs inside a preview sandbox as ``/usr/bin/python3 -I -B server.py``, so it uses the standard
library only.
"""

import http.server
import os
import socket
import socketserver


class Handler(http.server.SimpleHTTPRequestHandler):
    # GET and HEAD only: SimpleHTTPRequestHandler has no handler that writes.

    def address_string(self) -> str:
        return "preview-socket"  # a Unix socket peer has no address; the default would fail


class InheritedSocketServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Serves on a socket already bound and listening (socket activation)."""

    daemon_threads = True

    def __init__(self, fd: int) -> None:
        super().__init__("", Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = socket.socket(fileno=fd)


def main() -> None:
    port = os.environ.get("PREVIEW_PORT")
    if port:
        with socketserver.ThreadingTCPServer(("", int(port)), Handler) as server:
            server.daemon_threads = True
            server.serve_forever()
        return
    with InheritedSocketServer(int(os.environ["PREVIEW_LISTEN_FD"])) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
