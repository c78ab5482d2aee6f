"""POST /api/v1/skus/{slug}/previews, GET and DELETE /api/v1/previews/{id}: a buyer's previews."""

import hashlib
import re
import threading
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.db import connections
from rest_framework.test import APIClient

from accounts.services import api_token_issue
from audit.models import AuditEvent
from catalog.models import Sku
from marketplace.models import User
from previews.models import MaterialKind, PreviewSession, SessionStatus
from previews.sandbox import available
from previews.services import preview_end, preview_open, preview_teardown
from tests.catalog.factories import TEST_ACTOR, make_publisher, publish_sku
from tests.previews.factories import add_material, previewable_sku
from tests.support.worker import wait_until

TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
SANDBOX_UNAVAILABLE = available()
needs_sandbox = pytest.mark.skipif(
    SANDBOX_UNAVAILABLE is not None, reason=SANDBOX_UNAVAILABLE or ""
)
SESSION_FIELDS = {
    "id",
    "sku",
    "kind",
    "status",
    "material_version",
    "created_at",
    "ready_at",
    "expires_at",
    "ended_at",
    "reason",
    "detail",
}


def create(client: APIClient, slug: str, **headers: Any) -> Any:
    return client.post(f"/api/v1/skus/{slug}/previews", **headers)


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


def writes() -> tuple[int, int]:
    """What a refused request must leave as it was: sessions and audit events."""
    return PreviewSession.objects.count(), AuditEvent.objects.count()


def client_for(user: User) -> APIClient:
    _, token = api_token_issue(email=user.email, actor=TEST_ACTOR)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@pytest.fixture
def other_client(other_buyer: User) -> APIClient:
    return client_for(other_buyer)


@pytest.fixture
def sample_sku(db: None) -> Sku:
    return previewable_sku(MaterialKind.SAMPLE)


# --- Opening a sample --------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(("sku_ttl", "max_ttl", "lasts"), [(900, 3600, 900), (7200, 3600, 3600)])
def test_a_sample_opens_ready_with_a_token_and_the_shorter_of_the_ttls(
    buyer_client, settings, sku_ttl, max_ttl, lasts
):
    settings.PREVIEW_MAX_TTL_SECONDS = max_ttl
    sku = previewable_sku(MaterialKind.SAMPLE, preview_ttl_seconds=sku_ttl)

    answer = create(buyer_client, sku.slug)

    assert answer.status_code == 201, answer.content
    body = answer.json()
    assert set(body) == SESSION_FIELDS | {"token", "url"}
    assert TOKEN.fullmatch(body["token"])
    assert body["url"] == f"{settings.PUBLIC_URL}/previews/{body['token']}/"
    assert body["sku"] == sku.slug
    assert body["kind"] == MaterialKind.SAMPLE
    assert body["status"] == SessionStatus.READY
    assert body["material_version"] == 1
    assert body["ready_at"] == body["created_at"]
    assert at(body["expires_at"]) - at(body["created_at"]) == timedelta(seconds=lasts)
    assert (body["ended_at"], body["reason"], body["detail"]) == (None, None, "")
    assert answer.headers["Location"] == f"/api/v1/previews/{body['id']}"
    assert answer.headers["Cache-Control"] == "no-store"
    assert "Preference-Applied" not in answer.headers
    session = PreviewSession.objects.get()
    assert str(session.pk) == body["id"]
    assert session.expires_at - session.created_at == timedelta(seconds=lasts)


@pytest.mark.django_db
def test_only_the_tokens_hash_is_kept(buyer_client, sample_sku):
    body = create(buyer_client, sample_sku.slug).json()
    token = body["token"]

    row = PreviewSession.objects.filter(pk=body["id"]).values().get()
    assert row["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert [name for name, value in row.items() if token in str(value)] == []
    events = AuditEvent.objects.filter(subject_id=body["id"])
    assert sorted(events.values_list("action", flat=True)) == ["preview.created", "preview.ready"]
    assert [e.pk for e in events if token in str(e.data)] == []
    # Nor is it shown again.
    again = buyer_client.get(f"/api/v1/previews/{body['id']}").json()
    assert "token" not in again
    assert "url" not in again


@pytest.mark.django_db
def test_prefer_wait_is_applied_and_a_sample_answers_at_once(buyer_client, sample_sku):
    started = time.monotonic()
    answer = create(buyer_client, sample_sku.slug, HTTP_PREFER="wait=2")

    assert answer.status_code == 201
    assert answer.headers["Preference-Applied"] == "wait=2"
    assert answer.json()["status"] == SessionStatus.READY
    assert time.monotonic() - started < 1.5


@pytest.mark.django_db
def test_the_wait_applied_is_the_capped_one(buyer_client, settings, sample_sku):
    settings.PREVIEW_READY_WAIT_SECONDS = 2.5

    answer = create(buyer_client, sample_sku.slug, HTTP_PREFER="respond-async, wait=60")

    assert answer.status_code == 201
    assert answer.headers["Preference-Applied"] == "wait=2.5"


# --- Reading and ending ------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_buyer_reads_their_own_preview(buyer_client, sample_sku):
    created = create(buyer_client, sample_sku.slug).json()

    answer = buyer_client.get(f"/api/v1/previews/{created['id']}")

    assert answer.status_code == 200
    assert answer.json() == {key: created[key] for key in SESSION_FIELDS}


@pytest.mark.django_db
def test_another_buyers_preview_is_not_found_like_one_that_does_not_exist(
    buyer_client, other_client, sample_sku
):
    created = create(buyer_client, sample_sku.slug).json()
    unknown = str(uuid.uuid4())
    before = writes()

    theirs = other_client.get(f"/api/v1/previews/{created['id']}")
    nobodys = other_client.get(f"/api/v1/previews/{unknown}")
    ended = other_client.delete(f"/api/v1/previews/{created['id']}")

    assert theirs.status_code == nobodys.status_code == ended.status_code == 404
    assert theirs.json() == {
        key: value.replace(unknown, created["id"]) if isinstance(value, str) else value
        for key, value in nobodys.json().items()
    }
    assert theirs.json()["code"] == "preview-not-found"
    assert ended.json()["code"] == "preview-not-found"
    assert writes() == before
    assert PreviewSession.objects.get().status == SessionStatus.READY


@pytest.mark.django_db
def test_delete_ends_the_preview_and_its_token_is_gone(client, buyer_client, sample_sku):
    created = create(buyer_client, sample_sku.slug).json()

    answer = buyer_client.delete(f"/api/v1/previews/{created['id']}")

    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == SessionStatus.ENDED
    assert body["reason"] == "ended"
    assert body["detail"] == "The preview was ended."  # the API says the reason in its own words
    assert body["ended_at"] is not None
    ended = AuditEvent.objects.get(action="preview.ended", subject_id=created["id"])
    assert ended.data == {"reason": "ended", "detail": "ended by the buyer"}
    page = client.get(f"/previews/{created['token']}/")
    assert page.status_code == 410
    assert page.json()["reason"] == "ended"
    # A second DELETE finds it ended and changes nothing.
    before = writes()
    again = buyer_client.delete(f"/api/v1/previews/{created['id']}")
    assert again.status_code == 200
    assert again.json() == body
    assert writes() == before


@pytest.mark.django_db
def test_without_credentials_nothing_is_answered_or_written(api_client, sample_sku, buyer):
    created = preview_open(buyer=buyer, sku_slug=sample_sku.slug)
    before = writes()

    posted = create(api_client, sample_sku.slug)
    read = api_client.get(f"/api/v1/previews/{created.session.pk}")
    deleted = api_client.delete(f"/api/v1/previews/{created.session.pk}")

    assert [posted.status_code, read.status_code, deleted.status_code] == [401, 401, 401]
    assert writes() == before
    assert PreviewSession.objects.get().status == SessionStatus.READY


# --- Refusals ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_unknown_sku_is_not_found(buyer_client):
    before = writes()

    answer = create(buyer_client, "no-such-sku")

    assert answer.status_code == 404
    assert answer.json()["code"] == "preview-not-found"
    assert answer.json()["detail"] == "There is no SKU no-such-sku."
    assert writes() == before


def _draft() -> Sku:
    return previewable_sku(MaterialKind.SAMPLE, activate=False)


def _preview_off() -> Sku:
    sku = publish_sku(make_publisher())
    add_material(sku, MaterialKind.SAMPLE)
    return sku


def _no_material() -> Sku:
    # The services never switch a preview on without material (test_material.py), so the state
    # a concurrent withdrawal could leave behind is made directly.
    sku = publish_sku(make_publisher())
    Sku.objects.filter(pk=sku.pk).update(preview_enabled=True)
    return sku


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_draft, "{slug} is not on sale (draft)"),
        (_preview_off, "{slug} has no preview enabled"),
        (_no_material, "{slug} has no preview material"),
    ],
    ids=["draft", "preview-disabled", "no-material"],
)
def test_a_sku_that_cannot_be_previewed_is_a_conflict_naming_why(buyer_client, make, reason):
    sku = make()
    before = writes()

    answer = create(buyer_client, sku.slug)

    assert answer.status_code == 409
    body = answer.json()
    assert body["code"] == "preview-unavailable"
    assert body["reasons"] == [reason.format(slug=sku.slug)]
    assert body["detail"] == f"{sku.slug} cannot be previewed: {body['reasons'][0]}."
    assert writes() == before


@pytest.mark.django_db
def test_over_the_open_limit_is_429_until_one_expires(buyer_client, buyer, settings, sample_sku):
    settings.PREVIEW_MAX_OPEN_PER_BUYER = 2
    first = create(buyer_client, sample_sku.slug)
    create(buyer_client, sample_sku.slug)
    before = writes()

    answer = create(buyer_client, sample_sku.slug)

    assert answer.status_code == 429
    body = answer.json()
    assert body["code"] == "preview-limit"
    assert body["limit"] == "open"
    assert answer.headers["Retry-After"] == str(body["retry_after"])
    # The first of the two open expires first: after about the SKU's TTL.
    left = (at(first.json()["expires_at"]) - at(first.json()["created_at"])).total_seconds()
    assert left - 5 <= body["retry_after"] <= left
    assert writes() == before
    # Ending one frees its place.
    buyer_client.delete(f"/api/v1/previews/{first.json()['id']}")
    assert create(buyer_client, sample_sku.slug).status_code == 201


@pytest.mark.django_db
def test_over_the_hourly_limit_is_429_even_with_none_open(buyer_client, settings, sample_sku):
    settings.PREVIEW_MAX_STARTED_PER_HOUR = 2
    for _ in range(2):
        opened = create(buyer_client, sample_sku.slug).json()
        buyer_client.delete(f"/api/v1/previews/{opened['id']}")
    before = writes()

    answer = create(buyer_client, sample_sku.slug)

    assert answer.status_code == 429
    body = answer.json()
    assert body["code"] == "preview-limit"
    assert body["limit"] == "hourly"
    assert answer.headers["Retry-After"] == str(body["retry_after"])
    assert 3600 - 5 <= body["retry_after"] <= 3600
    assert writes() == before


@pytest.mark.django_db
def test_at_capacity_other_buyers_sandboxes_refuse_a_sandbox_503(buyer_client, settings):
    settings.PREVIEW_CAPACITY = 2
    sku = previewable_sku(MaterialKind.SANDBOX)
    for n in range(2):  # no worker runs here: they stay requested, holding their places
        someone = User.objects.create_user(email=f"someone{n}@example.com")
        preview_open(buyer=someone, sku_slug=sku.slug)
    before = writes()

    answer = create(buyer_client, sku.slug)

    assert answer.status_code == 503
    body = answer.json()
    assert body["code"] == "preview-capacity"
    assert answer.headers["Retry-After"] == str(body["retry_after"])
    # The soonest expiry is 900 s away; a client is told to come back within a minute.
    assert body["retry_after"] == 60
    assert writes() == before


@pytest.mark.django_db
def test_a_sample_runs_nothing_and_is_not_held_back_by_capacity(buyer_client, settings):
    settings.PREVIEW_CAPACITY = 1
    sandbox = previewable_sku(MaterialKind.SANDBOX)
    sample = previewable_sku(MaterialKind.SAMPLE)
    preview_open(buyer=User.objects.create_user(email="someone@example.com"), sku_slug=sandbox.slug)

    assert create(buyer_client, sandbox.slug).status_code == 503
    assert create(buyer_client, sample.slug).status_code == 201


# --- Concurrency -------------------------------------------------------------------------------


def _post_at_once(clients: list[APIClient], slug: str) -> list[int]:
    barrier = threading.Barrier(len(clients))
    statuses: list[int] = []
    failures: list[BaseException] = []

    def post(client: APIClient) -> None:
        try:
            barrier.wait(timeout=10)
            statuses.append(create(client, slug).status_code)
        except BaseException as exc:
            failures.append(exc)
        finally:
            connections.close_all()  # this thread's own connection

    threads = [threading.Thread(target=post, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    return sorted(statuses)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_one_buyer_posting_at_once_never_exceeds_the_open_limit(buyer, settings):
    settings.PREVIEW_MAX_OPEN_PER_BUYER = 2
    sku = previewable_sku(MaterialKind.SAMPLE)
    clients = [client_for(buyer) for _ in range(8)]

    statuses = _post_at_once(clients, sku.slug)

    assert statuses == [201] * 2 + [429] * 6
    assert PreviewSession.objects.filter(buyer=buyer).open().count() == 2
    assert AuditEvent.objects.filter(action="preview.created").count() == 2


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_many_buyers_posting_at_once_never_exceed_capacity(settings):
    settings.PREVIEW_CAPACITY = 3
    sku = previewable_sku(MaterialKind.SANDBOX)  # no worker: each stays requested
    clients = [
        client_for(User.objects.create_user(email=f"buyer{n}@example.com")) for n in range(8)
    ]

    statuses = _post_at_once(clients, sku.slug)

    assert statuses == [201] * 3 + [503] * 5
    assert PreviewSession.objects.open().count() == 3
    assert PreviewSession.objects.values("buyer").distinct().count() == 3
    assert set(PreviewSession.objects.values_list("status", flat=True)) == {"requested"}
    assert AuditEvent.objects.filter(action="preview.created").count() == 3


# --- A sandbox, started by a real worker -------------------------------------------------------


@pytest.fixture
def sandboxes_torn_down(transactional_db: None) -> Any:
    """Whatever sandbox a test left running is ended and torn down from here, so none outlives
    the test (the worker may have stopped before its teardown task ran)."""
    yield
    for session in PreviewSession.objects.exclude(status=SessionStatus.TORN_DOWN):
        preview_end(session_id=session.pk, reason="revoked", detail="test over", actor=TEST_ACTOR)
        preview_teardown(session_id=session.pk)


@needs_sandbox
@pytest.mark.django_db(transaction=True)
def test_a_sandbox_is_ready_within_the_wait_it_was_asked_for(
    sandboxes_torn_down, celery_worker, buyer_client
):
    sku = previewable_sku(MaterialKind.SANDBOX)

    answer = create(buyer_client, sku.slug, HTTP_PREFER="wait=5")

    assert answer.status_code == 201
    assert answer.headers["Preference-Applied"] == "wait=5"
    body = answer.json()
    assert body["status"] == SessionStatus.READY, celery_worker.log()[-3000:]
    assert body["kind"] == MaterialKind.SANDBOX
    assert body["ready_at"] is not None
    assert buyer_client.get(f"/previews/{body['token']}/").status_code == 200


@needs_sandbox
@pytest.mark.django_db(transaction=True)
def test_a_sandbox_polled_with_get_becomes_ready_and_is_ended_by_delete(
    sandboxes_torn_down, celery_worker, buyer_client
):
    sku = previewable_sku(MaterialKind.SANDBOX)

    body = create(buyer_client, sku.slug).json()

    assert body["status"] == SessionStatus.REQUESTED
    assert body["ready_at"] is None
    # Until it is ready its URL says to come back shortly.
    seen = []

    def ready() -> bool:
        seen.append(buyer_client.get(f"/api/v1/previews/{body['id']}").json()["status"])
        return seen[-1] == SessionStatus.READY

    wait_until(ready, timeout=20, worker=celery_worker)
    assert set(seen) <= {SessionStatus.REQUESTED, SessionStatus.STARTING, SessionStatus.READY}
    assert buyer_client.get(f"/previews/{body['token']}/").status_code == 200

    assert buyer_client.delete(f"/api/v1/previews/{body['id']}").json()["reason"] == "ended"
    wait_until(
        lambda: PreviewSession.objects.get(pk=body["id"]).status == SessionStatus.TORN_DOWN,
        worker=celery_worker,
    )
    assert buyer_client.get(f"/previews/{body['token']}/").json()["reason"] == "ended"


# --- The OpenAPI document ----------------------------------------------------------------------


@pytest.mark.django_db
def test_the_openapi_document_lists_the_three_operations(api_client):
    document = api_client.get("/api/schema/?format=json").json()

    create_op = document["paths"]["/api/v1/skus/{slug}/previews"]["post"]
    assert set(create_op["responses"]) >= {"201", "404", "409", "429", "503"}
    parameters = {p["name"]: p["in"] for p in create_op["parameters"]}
    assert parameters["Prefer"] == "header"
    detail = document["paths"]["/api/v1/previews/{preview_id}"]
    assert {"get", "delete"} <= set(detail)
    assert set(detail["get"]["responses"]) >= {"200", "404"}
    assert set(detail["delete"]["responses"]) >= {"200", "404"}


@pytest.mark.django_db
def test_a_buyer_sees_why_in_the_platforms_words_never_the_sandboxs_or_an_operators(
    buyer, buyer_client
):
    sku = previewable_sku(MaterialKind.SAMPLE)
    opened = preview_open(buyer=buyer, sku_slug=sku.slug)
    preview_end(
        session_id=opened.session.pk,
        reason="failed",
        detail="bwrap: /srv/platform/previews/x: Permission denied",
        actor=TEST_ACTOR,
    )

    body = buyer_client.get(f"/api/v1/previews/{opened.session.pk}").json()

    assert (body["reason"], body["detail"]) == ("failed", "The preview's sandbox failed.")
