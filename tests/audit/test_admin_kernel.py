"""The Kernel cursor's admin page: the cursor and the backlog, and the "Push to the Kernel now"
button, against the stand-in Kernel (tests/support/kernel.py) when one is configured."""

from typing import Any

import pytest
from django.contrib.messages import get_messages
from django.db import transaction

from audit.models import AuditEvent, KernelCursor
from audit.sealer import seal_all
from audit.services import audit_append
from marketplace.actors import Actor
from marketplace.models import User
from marketplace.roles import FINANCE, SECURITY
from tests.conftest import _staff
from tests.support.kernel import KernelServer, server_error

pytestmark = pytest.mark.django_db

PAGE = "/admin/audit/kernelcursor/"
PUSH = "/admin/audit/kernelcursor/push/"


def append(count: int) -> None:
    for index in range(count):
        with transaction.atomic():
            audit_append(
                actor=Actor.service("tests"),
                action="test.appended",
                subject=("thing", index),
                data={"index": index},
            )
    seal_all()  # the push seals by itself; the page's head is what is sealed


def messages_of(response: Any) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def cursor_state() -> list[tuple[Any, ...]]:
    return list(KernelCursor.objects.values_list("acknowledged_sequence", "attempts", "last_error"))


@pytest.fixture
def security_client(client: Any) -> Any:
    client.force_login(_staff("security@example.com", SECURITY))
    return client


def test_the_page_shows_the_cursor_the_head_and_the_backlog(security_client, settings):
    settings.KERNEL_URL = ""
    append(3)
    KernelCursor.objects.create(id=1, acknowledged_sequence=1, attempts=2, last_error="timed out")

    response = security_client.get(PAGE)

    assert response.status_code == 200
    state = response.context["state"]
    assert (state.head_sequence, state.acknowledged_sequence, state.backlog) == (3, 1, 2)
    page = response.content.decode()
    assert '<td id="head-sequence">#3</td>' in page
    assert '<td id="acknowledged-sequence">#1</td>' in page
    assert '<td id="backlog">2 events</td>' in page
    assert '<td id="attempts">2</td>' in page
    assert "timed out" in page
    assert 'id="kernel-push"' in page
    assert 'id="kernel-not-configured"' in page


def test_pushing_with_no_kernel_configured_says_so_and_sends_nothing(security_client, settings):
    settings.KERNEL_URL = ""
    append(2)

    response = security_client.post(PUSH, follow=True)

    assert response.status_code == 200
    assert messages_of(response) == [
        "No Kernel is configured (MARKETPLACE_KERNEL_URL is empty): nothing was pushed."
    ]
    assert cursor_state() == []
    assert response.context["state"].backlog == 2


def test_pushing_delivers_the_events_and_moves_the_cursor(security_client, kernel: KernelServer):
    append(3)

    response = security_client.post(PUSH, follow=True)

    assert messages_of(response) == [
        "Pushed: the Kernel has acknowledged through #3 (3 event(s) newly acknowledged); "
        "nothing is waiting."
    ]
    assert [event["record"]["sequence"] for event in kernel.audit_events] == [1, 2, 3]
    assert cursor_state() == [(3, 0, "")]
    assert response.context["state"].backlog == 0
    assert 'id="kernel-not-configured"' not in response.content.decode()


def test_a_failed_push_reports_the_kernels_error_and_records_it(
    security_client, kernel: KernelServer
):
    append(2)
    kernel.script(server_error())

    response = security_client.post(PUSH, follow=True)

    [(acknowledged, attempts, last_error)] = cursor_state()
    assert (acknowledged, attempts) == (0, 1)
    assert "500" in last_error
    assert messages_of(response) == [
        f"The push failed (attempt 1): {last_error}. The worker tries again in 1 s."
    ]
    assert kernel.audit_events == []


def test_other_staff_cannot_see_the_page_or_push(client, kernel: KernelServer):
    client.force_login(_staff("finance@example.com", FINANCE))
    append(2)

    assert client.get(PAGE).status_code == 403
    assert client.post(PUSH).status_code == 403
    assert kernel.requests == []
    assert cursor_state() == []


def test_a_superuser_may_push(client, kernel: KernelServer):
    client.force_login(User.objects.create_superuser("root@example.com", "x"))
    append(1)

    client.post(PUSH)

    assert cursor_state() == [(1, 0, "")]
    assert AuditEvent.objects.count() == 1


def test_the_push_button_only_takes_a_post(security_client, settings):
    settings.KERNEL_URL = ""
    assert security_client.get(PUSH).status_code == 405
