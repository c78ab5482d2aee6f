"""A platform download link (local files) as a person expects it to behave: HEAD and OPTIONS
cost nothing, Range requests are answered 206 (RFC 9110), and a link counts one download
however many requests and ranges it takes, so an aborted transfer resumes for free."""

import hashlib
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
import requests
from django.conf import settings
from django.core import signing
from django.test import Client
from django.utils import timezone

from licensing.models import Delivery, DownloadLog, DownloadSession
from marketplace.roles import SUPPORT
from tests.licensing.factories import STAFF_PASSWORD, order_delivered, staff_member

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _small_chunks(settings) -> None:
    settings.DELIVERY_CHUNK_BYTES = 16 * 1024  # several chunks for the ~100 KiB artifact


def link_of(buyer_client, order) -> str:
    response = buyer_client.get(f"/api/v1/orders/{order.pk}/delivery")
    assert response.status_code == 200, response.content
    return urlsplit(response.json()["download_url"]).path


def next_link_of(buyer_client, order) -> str:
    """A link of its own: the links handed out so far are aged past half their lifetime, so
    the API hands out a new one instead of the one still open (they stay valid)."""
    left = timedelta(seconds=settings.DOWNLOAD_LINK_SECONDS // 2 - 5)
    DownloadSession.objects.filter(delivery__order=order).update(expires_at=timezone.now() + left)
    return link_of(buyer_client, order)


def body_of(response) -> bytes:
    return b"".join(response.streaming_content)


def package_of(delivery: Delivery) -> bytes:
    from licensing.storage import package_open

    with package_open(delivery.storage_name) as handle:
        return handle.read()


def downloads(delivery: Delivery) -> int:
    return Delivery.objects.get(pk=delivery.pk).downloads


# --- HEAD and OPTIONS ---------------------------------------------------------------------------


def test_head_answers_the_headers_and_costs_nothing(buyer, buyer_client, client):
    delivered = order_delivered(buyer)
    link = link_of(buyer_client, delivered.order)
    size = len(package_of(delivered.delivery))

    for _ in range(3):
        head = client.head(link)
        assert head.status_code == 200
        assert head["Content-Length"] == str(size)
        assert head["Accept-Ranges"] == "bytes"
        assert head["ETag"] == f'"{delivered.delivery.package_sha256}"'
        assert head["X-Package-SHA256"] == delivered.delivery.package_sha256
        assert head["Content-Type"] == "application/octet-stream"
        assert not head.streaming
        assert head.content == b""

    assert downloads(delivered.delivery) == 0
    assert not DownloadLog.objects.exists()
    # The one GET that follows is the one download.
    assert client.get(link).status_code == 200
    assert downloads(delivered.delivery) == 1


def test_options_costs_nothing_and_says_what_is_allowed(buyer, buyer_client, client):
    delivered = order_delivered(buyer)
    link = link_of(buyer_client, delivered.order)

    response = client.options(link)

    assert response.status_code == 200
    assert response["Allow"] == "GET, HEAD, OPTIONS"
    assert downloads(delivered.delivery) == 0
    assert not DownloadLog.objects.exists()


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_other_methods_are_refused_and_cost_nothing(buyer, buyer_client, method):
    delivered = order_delivered(buyer)
    link = link_of(buyer_client, delivered.order)
    # As a browser or any client without the site's CSRF cookie sends them: the link is the
    # credential, so the answer is the documented 405, not a CSRF refusal.
    client = Client(enforce_csrf_checks=True)

    response = getattr(client, method)(link)

    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD, OPTIONS"
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["status"] == 405
    assert downloads(delivered.delivery) == 0


def test_head_of_a_dead_link_says_so_without_counting(buyer, buyer_client, client, settings):
    delivered = order_delivered(buyer)
    settings.DOWNLOAD_LINK_SECONDS = 0
    link = link_of(buyer_client, delivered.order)

    assert client.head(link).status_code == 410
    assert client.head("/marketplace/deliveries/nothing").status_code == 404
    assert downloads(delivered.delivery) == 0


# --- Ranges -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "first", "last"),
    [
        ("bytes=100-199", 100, 199),
        ("bytes=0-0", 0, 0),
        ("bytes=-50", None, None),  # the last 50 bytes
        ("bytes=1000-", 1000, None),  # from 1000 to the end
        ("bytes=1000-99999999", 1000, None),  # a last byte past the end means the end
    ],
)
def test_a_byte_range_is_answered_206_with_its_content_range(
    buyer, buyer_client, client, spec, first, last
):
    delivered = order_delivered(buyer)
    package = package_of(delivered.delivery)
    size = len(package)
    first = size - 50 if first is None else first
    last = size - 1 if last is None else last
    link = link_of(buyer_client, delivered.order)

    response = client.get(link, HTTP_RANGE=spec)

    assert response.status_code == 206
    assert response.streaming  # read from storage a piece at a time
    assert response["Content-Range"] == f"bytes {first}-{last}/{size}"
    assert response["Content-Length"] == str(last - first + 1)
    assert response["Accept-Ranges"] == "bytes"
    assert response["ETag"] == f'"{delivered.delivery.package_sha256}"'
    assert body_of(response) == package[first : last + 1]
    assert downloads(delivered.delivery) == 1


@pytest.mark.parametrize("spec", ["bytes=999999999-", "bytes=-0", "bytes=999999999-999999999"])
def test_an_unsatisfiable_range_is_416_and_costs_nothing(buyer, buyer_client, client, spec):
    delivered = order_delivered(buyer)
    size = len(package_of(delivered.delivery))
    link = link_of(buyer_client, delivered.order)

    response = client.get(link, HTTP_RANGE=spec)

    assert response.status_code == 416
    assert response["Content-Range"] == f"bytes */{size}"
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "range-not-satisfiable"
    assert downloads(delivered.delivery) == 0
    assert not DownloadLog.objects.exists()


@pytest.mark.parametrize(
    "spec",
    [
        "bytes=0-9,20-29",  # several ranges: the whole package (documented)
        "bytes=20-10",  # last before first: not a valid range, ignored
        "items=0-9",  # another unit
        "bytes=abc",
    ],
)
def test_several_or_malformed_ranges_get_the_whole_package(buyer, buyer_client, client, spec):
    delivered = order_delivered(buyer)
    package = package_of(delivered.delivery)
    link = link_of(buyer_client, delivered.order)

    response = client.get(link, HTTP_RANGE=spec)

    assert response.status_code == 200
    assert response["Content-Length"] == str(len(package))
    assert "Content-Range" not in response
    assert body_of(response) == package


def test_if_range_honours_the_range_only_for_the_packages_etag(buyer, buyer_client, client):
    delivered = order_delivered(buyer)
    package = package_of(delivered.delivery)
    link = link_of(buyer_client, delivered.order)
    etag = f'"{delivered.delivery.package_sha256}"'

    same = client.get(link, HTTP_RANGE="bytes=10-19", HTTP_IF_RANGE=etag)
    assert (same.status_code, body_of(same)) == (206, package[10:20])

    for other in ('"0000"', f"W/{etag}", "Wed, 21 Oct 2015 07:28:00 GMT"):
        changed = client.get(link, HTTP_RANGE="bytes=10-19", HTTP_IF_RANGE=other)
        assert (changed.status_code, body_of(changed)) == (200, package)
    assert downloads(delivered.delivery) == 1


# --- Counted once per link ----------------------------------------------------------------------


def test_a_link_counts_once_however_many_ranges_it_takes(buyer, buyer_client, client):
    delivered = order_delivered(buyer)
    package = package_of(delivered.delivery)
    link = link_of(buyer_client, delivered.order)

    pieces = [
        body_of(client.get(link, HTTP_RANGE=f"bytes={start}-{start + 9999}"))
        for start in range(0, len(package), 10000)
    ]

    assert b"".join(pieces) == package
    assert downloads(delivered.delivery) == 1
    assert DownloadLog.objects.count() == 1
    session = DownloadSession.objects.get()
    assert session.counted_at is not None
    assert session.bytes_served == len(package)
    assert session.requests == len(pieces)


@pytest.mark.django_db(transaction=True)
def test_an_aborted_transfer_resumes_on_the_same_link_for_free(buyer, buyer_client, live_server):
    delivered = order_delivered(buyer)
    package = package_of(delivered.delivery)
    url = live_server.url + link_of(buyer_client, delivered.order)

    # The connection drops after the first 30,000 bytes.
    with requests.get(url, stream=True, timeout=10) as aborted:
        assert aborted.status_code == 200
        head = aborted.raw.read(30000)
    assert len(head) == 30000

    rest = requests.get(url, headers={"Range": f"bytes={len(head)}-"}, timeout=10)

    assert rest.status_code == 206
    assert rest.headers["Content-Range"] == f"bytes 30000-{len(package) - 1}/{len(package)}"
    whole = head + rest.content
    assert hashlib.sha256(whole).hexdigest() == delivered.delivery.package_sha256
    assert downloads(delivered.delivery) == 1
    assert DownloadLog.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_ranges_on_one_link_count_once(buyer, buyer_client, live_server):
    delivered = order_delivered(buyer)
    package = package_of(delivered.delivery)
    url = live_server.url + link_of(buyer_client, delivered.order)
    step = len(package) // 8 + 1
    starts = list(range(0, len(package), step))

    def fetch(start: int) -> tuple[int, bytes]:
        answer = requests.get(
            url, headers={"Range": f"bytes={start}-{start + step - 1}"}, timeout=30
        )
        return answer.status_code, answer.content

    with ThreadPoolExecutor(len(starts)) as pool:
        answers = list(pool.map(fetch, starts))

    assert [status for status, _ in answers] == [206] * len(starts)
    assert hashlib.sha256(b"".join(body for _, body in answers)).hexdigest() == (
        delivered.delivery.package_sha256
    )
    assert downloads(delivered.delivery) == 1
    assert DownloadLog.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_limit_holds_across_links_fetched_at_once(buyer, buyer_client, live_server, settings):
    settings.DOWNLOAD_LIMIT = 2
    delivered = order_delivered(buyer)
    links = [link_of(buyer_client, delivered.order)]
    links += [next_link_of(buyer_client, delivered.order) for _ in range(5)]
    assert len(set(links)) == 6

    def fetch(link: str) -> int:
        return requests.get(live_server.url + link, timeout=30).status_code

    with ThreadPoolExecutor(len(links)) as pool:
        statuses = sorted(pool.map(fetch, links))

    assert statuses == [200, 200, 410, 410, 410, 410]
    assert downloads(delivered.delivery) == 2
    assert DownloadSession.objects.filter(counted_at__isnull=False).count() == 2
    assert DownloadLog.objects.count() == 2


def test_a_counted_link_still_resumes_at_the_limit(buyer, buyer_client, client, settings):
    settings.DOWNLOAD_LIMIT = 1
    delivered = order_delivered(buyer)
    package = package_of(delivered.delivery)
    link = link_of(buyer_client, delivered.order)
    first = client.get(link, HTTP_RANGE="bytes=0-999")
    assert body_of(first) == package[:1000]

    # Asking the API again hands out the same, already counted link.
    assert link_of(buyer_client, delivered.order) == link
    rest = client.get(link, HTTP_RANGE="bytes=1000-")
    assert (rest.status_code, body_of(rest)) == (206, package[1000:])
    assert downloads(delivered.delivery) == 1

    # Past half its lifetime, the limit reached, the API still hands out that counted link
    # (no new one): it can be resumed until it expires.
    nearly = timezone.now().replace(microsecond=0) + timedelta(seconds=30)
    DownloadSession.objects.update(expires_at=nearly)
    again = buyer_client.get(f"/api/v1/orders/{delivered.order.pk}/delivery")
    assert again.status_code == 200, again.content
    assert urlsplit(again.json()["download_url"]).path == link
    assert (again.json()["expires_at"], again.json()["downloads_left"]) == (
        nearly.isoformat().replace("+00:00", "Z"),
        0,
    )
    assert client.get(link, HTTP_RANGE="bytes=0-9").status_code == 206
    assert (DownloadSession.objects.count(), downloads(delivered.delivery)) == (1, 1)

    # Once it has expired, the limit is what is left.
    DownloadSession.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    refused = buyer_client.get(f"/api/v1/orders/{delivered.order.pk}/delivery")
    assert (refused.status_code, refused.json()["reason"]) == (410, "limit")
    assert DownloadSession.objects.count() == 1


def test_the_delivery_page_shows_its_links_and_what_they_served(buyer, buyer_client, client):
    delivered = order_delivered(buyer)
    package = package_of(delivered.delivery)
    link = link_of(buyer_client, delivered.order)
    body_of(client.get(link, HTTP_RANGE="bytes=0-999"))
    body_of(client.get(link, HTTP_RANGE="bytes=1000-"))
    staff = staff_member("support@example.com", SUPPORT)
    admin = Client()
    assert admin.login(email=staff.email, password=STAFF_PASSWORD)

    page = admin.get(f"/admin/licensing/delivery/{delivered.delivery.pk}/change/")

    assert page.status_code == 200
    links = page.context["inline_admin_formsets"][0]
    assert links.opts.model is DownloadSession
    (row,) = links.formset.queryset
    assert (row.requests, row.bytes_served) == (2, len(package))
    assert not links.has_add_permission
    assert not links.has_change_permission
    content = page.content.decode()
    assert 'class="field-bytes_served"' in content
    assert f"{len(package)}" in content or f"{len(package):,}" in content


def test_a_link_of_the_form_before_sessions_is_expired_not_served(buyer, client):
    delivered = order_delivered(buyer)
    old_form = signing.dumps(
        {"d": str(delivered.delivery.pk), "e": 4102444800}, salt="licensing.download-link"
    )

    response = client.get(f"/marketplace/deliveries/{old_form}")

    assert (response.status_code, response.json()["reason"]) == (410, "expired")
    assert downloads(delivered.delivery) == 0
