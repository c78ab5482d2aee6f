"""A refused request is logged as one warning line, without the traceback Django attaches to a
PermissionDenied (marketplace.logging.RefusalWithoutTraceback, in the settings' LOGGING);
other errors keep theirs."""

import logging
import sys

import pytest
from django.core.exceptions import PermissionDenied

from marketplace.logging import RefusalWithoutTraceback
from marketplace.models import User

pytestmark = pytest.mark.django_db


def test_staff_without_a_role_refused_by_the_admin_is_one_warning_line(client, caplog):
    staff = User.objects.create_user(email="no.role@example.com", is_staff=True)
    client.force_login(staff)

    with caplog.at_level(logging.INFO):
        response = client.get("/admin/orders/order/")

    assert response.status_code == 403
    refusals = [r for r in caplog.records if r.name == "django.request"]
    assert [(r.levelname, r.getMessage()) for r in refusals] == [
        ("WARNING", "Forbidden (Permission denied): /admin/orders/order/")
    ]
    assert refusals[0].exc_info is None
    assert refusals[0].status_code == 403
    assert "Traceback" not in caplog.text
    assert "PermissionDenied" not in caplog.text


def _record(status_code: int, exc: Exception) -> logging.LogRecord:
    try:
        raise exc
    except type(exc):
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "django.request", logging.ERROR, __file__, 1, "message", (), exc_info
    )
    record.status_code = status_code
    return record


def test_an_error_keeps_its_traceback():
    record = _record(500, ValueError("boom"))

    assert RefusalWithoutTraceback().filter(record) is True
    assert record.exc_info is not None
    assert "ValueError: boom" in logging.Formatter().format(record)


def test_a_permission_denied_loses_only_its_traceback():
    record = _record(403, PermissionDenied())

    assert RefusalWithoutTraceback().filter(record) is True
    assert record.exc_info is None
    assert logging.Formatter().format(record) == "message"
