"""Logging filters named in the settings' LOGGING."""

import logging

from django.core.exceptions import PermissionDenied


class RefusalWithoutTraceback(logging.Filter):
    """Keeps a refused request (403) to its one warning line.

    Django logs a `PermissionDenied` raised by a view (the admin's, for a staff member whose
    roles do not cover the page) on `django.request` with the exception attached, so each
    refusal printed a traceback of Django's own frames: an expected answer, not an error. The
    record keeps its level, message, status code and request; only the traceback goes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        refused = getattr(record, "status_code", None) == 403
        if record.exc_info and (refused or isinstance(record.exc_info[1], PermissionDenied)):
            record.exc_info = None
            record.exc_text = None
        return True
