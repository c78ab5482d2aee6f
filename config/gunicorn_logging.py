"""gunicorn's access log without the credentials some URLs carry.

A preview's token (`/previews/{token}/…`) and a download link's (`/marketplace/deliveries/{token}`)
are bearer credentials in the path: whoever reads the access log could open the preview or fetch
the package. The Procfile runs gunicorn with
`--logger-class config.gunicorn_logging.RedactingLogger`.
"""

import re
from typing import Any

from gunicorn.glogging import Logger

_CREDENTIAL_IN_PATH = re.compile(r"(/previews/|/marketplace/deliveries/)[^/?#\s\"]+")
REDACTED = r"\1[redacted]"


def redact(text: Any) -> Any:
    return _CREDENTIAL_IN_PATH.sub(REDACTED, text) if isinstance(text, str) else text


class RedactingLogger(Logger):
    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> dict:
        # Every atom: the request line, the path, the referer, and each header and environ value
        # a log format may name.
        return {
            name: redact(value)
            for name, value in super().atoms(resp, req, environ, request_time).items()
        }
