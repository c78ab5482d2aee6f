"""Licensing in the admin, through the Django test client: who sees licenses, deliveries, the
download log and proofs; Revoke and Reissue (Security), Regenerate (Security and Support),
each a service call that is audited, and refused with nothing written to anyone else."""

from urllib.parse import urlsplit

import pytest
from django.contrib.messages import get_messages
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from audit.models import AuditEvent
from licensing.models import Delivery, DeliveryStatus, DownloadLog, License, LicenseStatus, Proof
from licensing.services import delivery_access
from marketplace.models import User
from marketplace.roles import FINANCE, SECURITY, SUPPORT
from tests.catalog.factories import make_publisher
from tests.licensing.factories import (
    STAFF_PASSWORD,
    order_delivered,
    order_refunded,
    order_revoked,
    sku_licensed,
    staff_member,
)

pytestmark = pytest.mark.django_db

LICENSES = "/admin/licensing/license/"
DELIVERIES = "/admin/licensing/delivery/"
DOWNLOADS = "/admin/licensing/downloadlog/"
PROOFS = "/admin/licensing/proof/"


def signed_in(user: User) -> Client:
    client = Client()
    assert client.login(email=user.email, password=STAFF_PASSWORD)
    return client


@pytest.fixture
def security(db) -> Client:
    return signed_in(staff_member("security@example.com", SECURITY))


@pytest.fixture
def support(db) -> Client:
    return signed_in(staff_member("support@example.com", SUPPORT))


@pytest.fixture
def finance(db) -> Client:
    return signed_in(staff_member("finance@example.com", FINANCE))


@pytest.fixture
def delivered(buyer):
    return order_delivered(buyer)


def act(client: Client, url: str, action: str, objects, reason: str | None = "because"):
    """Runs a changelist action as the admin's forms do: the selection, then the reason page."""
    data = {"action": action, "_selected_action": [str(obj.pk) for obj in objects]}
    if reason is not None:
        data.update(apply="Confirm", reason=reason)
    return client.post(url, data)


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def snapshot() -> tuple:
    return (
        AuditEvent.objects.count(),
        list(License.objects.order_by("pk").values_list("pk", "status")),
        list(Delivery.objects.order_by("pk").values_list("pk", "status")),
    )


# --- Who sees what -----------------------------------------------------------------------------


@pytest.mark.parametrize("url", [LICENSES, DELIVERIES, DOWNLOADS, PROOFS])
def test_security_and_support_see_licensing_and_finance_does_not(
    security, support, finance, delivered, url
):
    assert security.get(url).status_code == 200
    assert support.get(url).status_code == 200
    assert finance.get(url).status_code == 403
    assert Client().get(url).status_code == 302  # to the login page


def test_everything_is_read_only(security, delivered):
    license_page = security.get(f"{LICENSES}{delivered.license.pk}/change/")
    assert license_page.status_code == 200
    assert b'name="_save"' not in license_page.content
    assert delivered.license.license_key.encode() in license_page.content
    assert security.get(f"{LICENSES}add/").status_code == 403
    assert security.get(f"{DELIVERIES}add/").status_code == 403
    deleted = security.post(f"{DELIVERIES}{delivered.delivery.pk}/delete/", {"post": "yes"})
    assert deleted.status_code == 403
    proof = Proof.objects.get(order=delivered.order)
    proof_page = security.get(f"{PROOFS}{proof.pk}/change/")
    assert proof_page.status_code == 200
    assert proof.fingerprint.encode() in proof_page.content
    assert Delivery.objects.filter(pk=delivered.delivery.pk).exists()


def test_the_delivery_page_shows_the_download_log(support, delivered, client):
    access = delivery_access(
        order_id=delivered.order.pk,
        buyer=delivered.order.buyer,
        ip="203.0.113.9",
        user_agent="api-agent",
    )
    # Fetched as the buyer's downloader would: the link, no credentials.
    served = client.get(
        urlsplit(access.download_url).path, REMOTE_ADDR="198.51.100.7", HTTP_USER_AGENT="Wget/1.21"
    )
    assert served.status_code == 200
    b"".join(served.streaming_content)

    page = support.get(f"{DELIVERIES}{delivered.delivery.pk}/change/")
    assert page.status_code == 200
    content = page.content.decode()
    for text in (
        "198.51.100.7",
        "Wget/1.21",
        delivered.delivery.package_sha256,
        delivered.delivery.key_wrapping,
        "Download log",
    ):
        assert text in content, text
    listing = support.get(DOWNLOADS, {"q": str(delivered.order.pk)}).content.decode()
    assert "Wget/1.21" in listing


# --- Search ------------------------------------------------------------------------------------


def test_licenses_are_found_by_key_however_typed_by_email_and_by_order(security, buyer):
    publisher = make_publisher(slug="searchers")
    first = order_delivered(buyer, sku_licensed(publisher=publisher))
    second = order_delivered(buyer, sku_licensed(publisher=publisher))
    key = first.license.license_key

    def found(term: str) -> list[str]:
        response = security.get(LICENSES, {"q": term})
        assert response.status_code == 200
        return [license.license_key for license in response.context["cl"].result_list]

    assert found(key) == [key]
    assert found(key.lower().replace("-", "")) == [key]
    assert found(" " + key.removeprefix("MKP-").replace("-", " ").lower() + " ") == [key]
    assert found(str(first.order.pk)) == [key]
    assert found(str(first.license.pk)) == [key]
    assert sorted(found("BUYER@example.com")) == sorted([key, second.license.license_key])
    assert found("nobody@example.com") == []
    assert found("MKP-00000-00000-00000-00000") == []


def test_deliveries_are_found_by_order_and_email(security, delivered):
    response = security.get(DELIVERIES, {"q": str(delivered.order.pk)})
    assert list(response.context["cl"].result_list) == [delivered.delivery]
    response = security.get(DELIVERIES, {"q": delivered.order.buyer.email})
    assert list(response.context["cl"].result_list) == [delivered.delivery]


def test_list_pages_take_a_bounded_number_of_queries(security, buyer):
    publisher = make_publisher(slug="many")
    order_delivered(buyer, sku_licensed(publisher=publisher))

    def queries(url: str) -> int:
        with CaptureQueriesContext(connection) as captured:
            assert security.get(url).status_code == 200
        return len(captured)

    few = {url: queries(url) for url in (LICENSES, DELIVERIES, PROOFS, DOWNLOADS)}
    for _ in range(3):
        delivered = order_delivered(buyer, sku_licensed(publisher=publisher))
        delivery_access(order_id=delivered.order.pk, buyer=buyer, ip="203.0.113.1", user_agent="x")
    many = {url: queries(url) for url in (LICENSES, DELIVERIES, PROOFS, DOWNLOADS)}
    assert many == few


# --- Revoke and reissue: Security --------------------------------------------------------------


def test_security_revokes_a_license_with_a_reason_audited(security, delivered):
    license = delivered.license
    response = act(security, LICENSES, "revoke_selected", [license], reason="key leaked online")
    assert response.status_code == 302
    assert "1 license(s) revoked." in messages_of(response)

    license.refresh_from_db()
    assert (license.status, license.revoked_reason) == (LicenseStatus.REVOKED, "key leaked online")
    event = AuditEvent.objects.get(subject_type="license", action="license.revoked")
    staff = User.objects.get(email="security@example.com")
    assert (event.actor_type, event.actor_id) == ("staff", str(staff.uuid))
    assert event.data["reason"] == "key leaked online"


def test_revoking_without_a_reason_asks_for_one_and_writes_nothing(security, delivered):
    before = snapshot()
    page = act(security, LICENSES, "revoke_selected", [delivered.license], reason=None)
    assert page.status_code == 200
    assert b'name="reason"' in page.content
    blank = act(security, LICENSES, "revoke_selected", [delivered.license], reason="   ")
    assert blank.status_code == 200
    assert b"A reason is required." in blank.content
    assert snapshot() == before


def test_security_reissues_a_license_audited(security, delivered):
    old = delivered.license
    response = act(security, LICENSES, "reissue_selected", [old], reason="buyer lost it")
    assert response.status_code == 302

    old.refresh_from_db()
    new = License.objects.get(order=delivered.order, status=LicenseStatus.ACTIVE)
    assert new.supersedes == old
    assert old.status == LicenseStatus.REVOKED
    assert f"now has {new.license_key}" in " ".join(messages_of(response))
    actions = set(
        AuditEvent.objects.filter(subject_type="license").values_list("action", "subject_id")
    )
    assert {("license.revoked", str(old.pk)), ("license.reissued", str(new.pk))} <= actions


def test_reissue_is_refused_for_a_refunded_order_with_nothing_written(security, delivered):
    order_refunded(delivered.order)
    before = snapshot()
    response = act(security, LICENSES, "reissue_selected", [delivered.license], reason="please")
    assert response.status_code == 302
    assert any("refunded" in message for message in messages_of(response))
    assert snapshot() == before


@pytest.mark.parametrize("action", ["revoke_selected", "reissue_selected"])
def test_support_cannot_revoke_or_reissue_and_nothing_is_written(support, delivered, action):
    before = snapshot()
    response = act(support, LICENSES, action, [delivered.license], reason="trying")
    # Support has no action on licenses: the post falls through to the list, unapplied.
    assert response.status_code == 200
    assert messages_of(response) == []
    assert snapshot() == before
    page = support.get(LICENSES).content.decode()
    assert "revoke_selected" not in page
    assert "reissue_selected" not in page


# --- Regenerate: Security and Support ----------------------------------------------------------


@pytest.mark.parametrize("role", ["security", "support"])
def test_regenerate_makes_a_new_package_audited(request, delivered, role):
    client = request.getfixturevalue(role)
    response = act(client, DELIVERIES, "regenerate_selected", [delivered.delivery], "limit hit")
    assert response.status_code == 302
    assert any("regenerated" in message for message in messages_of(response))

    old = Delivery.objects.get(pk=delivered.delivery.pk)
    new = Delivery.objects.get(order=delivered.order, supersedes=old)
    assert (old.status, new.status) == (DeliveryStatus.SUPERSEDED, DeliveryStatus.PENDING)
    event = AuditEvent.objects.get(action="delivery.regenerated")
    assert event.subject_id == str(new.pk)
    assert event.data["supersedes"] == str(old.pk)
    assert event.data["reason"] == "limit hit"
    assert event.actor_type == "staff"


@pytest.mark.parametrize("revoked", [False, True])
def test_regenerate_is_refused_for_a_refunded_order_with_nothing_written(
    support, delivered, revoked
):
    order_refunded(delivered.order)
    if revoked:
        order_revoked(delivered.order)
    before = snapshot()

    response = act(support, DELIVERIES, "regenerate_selected", [delivered.delivery], "please")

    assert response.status_code == 302
    errors = messages_of(response)
    assert any("refunded" in message and "cannot be regenerated" in message for message in errors)
    assert not any("regenerated;" in message for message in errors)
    assert snapshot() == before


def test_finance_cannot_regenerate_and_nothing_is_written(finance, delivered):
    before = snapshot()
    response = act(finance, DELIVERIES, "regenerate_selected", [delivered.delivery], "x")
    assert response.status_code == 403
    assert snapshot() == before
    assert DownloadLog.objects.count() == 0
