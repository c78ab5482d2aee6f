"""The audit log's admin: read-only lists and pages, filters and search on whole values, the
verify page and the checkpoint button, who may see them, and a changelist whose number of
queries does not grow with its page."""

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from django.contrib.messages import get_messages
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from audit.checkpoints import checkpoint_create
from audit.models import AuditEvent, AuditExport, Checkpoint
from audit.sealer import seal_all
from audit.services import audit_append
from marketplace.actors import Actor
from marketplace.models import User
from marketplace.roles import SECURITY, SUPPORT
from tests.conftest import _staff
from tests.support.audit import owner_tamper, seal_dated

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/audit/auditevent/"
VERIFY = "/admin/audit/auditevent/verify/"
CHECKPOINT = "/admin/audit/auditevent/checkpoint/"


def append(
    action: str = "sku.activated",
    *,
    actor: Actor | None = None,
    subject: tuple[str, Any] = ("sku", 1),
    **data: Any,
) -> AuditEvent:
    with transaction.atomic():
        event = audit_append(
            actor=actor or Actor.system("test"), action=action, subject=subject, data=data
        )
    # Sealed at once, as on SQLite, so the lists show sequences in the order of the appends.
    seal_all()
    event.refresh_from_db()
    return event


def table_state() -> list[tuple[Any, ...]]:
    return list(AuditEvent.objects.order_by("sequence").values_list("sequence", "data", "hash"))


def listed(response: Any) -> list[int]:
    assert response.status_code == 200, response.status_code
    return [event.sequence for event in response.context["cl"].result_list]


def messages_of(response: Any) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


@pytest.fixture
def security_staff(db: None) -> User:
    return _staff("security@example.com", SECURITY)


@pytest.fixture
def support_staff(db: None) -> User:
    return _staff("support@example.com", SUPPORT)


@pytest.fixture
def security_client(client: Any, security_staff: User) -> Any:
    client.force_login(security_staff)
    return client


@pytest.fixture
def superuser_client(client: Any) -> Any:
    client.force_login(User.objects.create_superuser("root@example.com", "x"))
    return client


@pytest.fixture
def events(buyer: User, security_staff: User) -> list[AuditEvent]:
    return [
        append("sku.activated", subject=("sku", 7), slug="tool"),
        append("order.paid", actor=Actor.of_user(buyer), subject=("order", "o-1"), amount=1999),
        append("sku.suspended", actor=Actor.of_user(security_staff), subject=("sku", 7)),
        append("order.paid", actor=Actor.of_user(buyer), subject=("order", "o-2"), amount=500),
        append("license.issued", actor=Actor.service("worker"), subject=("license", "l-1")),
    ]


# --- Lists, filters, search --------------------------------------------------------------------


def test_the_list_shows_every_event_newest_first_with_the_users_emails(security_client, events):
    response = security_client.get(CHANGELIST)

    assert listed(response) == [5, 4, 3, 2, 1]
    page = response.content.decode()
    assert "buyer@example.com" in page
    assert "security@example.com" in page
    assert "Service" in page
    assert response.context["cl"].result_count == 5


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("action=order.paid", [4, 2]),
        ("action=no.such.action", []),
        ("actor_type__exact=service", [5]),
        ("actor_type__exact=buyer&action=order.paid", [4, 2]),
        ("subject_type=sku", [3, 1]),
        ("subject_type=sku&subject_id=7", [3, 1]),
        ("subject_type=order&subject_id=o-2", [4]),
        ("subject_id=o-1", [2]),
        ("actor_type__exact=service&actor_id=worker", [5]),
        ("actor_id=worker", [5]),
    ],
)
def test_filters_select_exactly_the_matching_events(security_client, events, query, expected):
    assert listed(security_client.get(f"{CHANGELIST}?{query}")) == expected


def test_the_actor_filter_names_the_user_it_is_set_to(security_client, events, buyer):
    response = security_client.get(f"{CHANGELIST}?actor_type__exact=buyer&actor_id={buyer.uuid}")

    assert listed(response) == [4, 2]
    actor_filter = next(s for s in response.context["cl"].filter_specs if s.title == "actor")
    assert actor_filter.lookup_choices == [(str(buyer.uuid), "buyer@example.com")]


def test_the_action_filter_offers_the_distinct_actions_in_order(security_client, events):
    response = security_client.get(CHANGELIST)

    specs = {spec.title: spec for spec in response.context["cl"].filter_specs}
    assert [value for value, _ in specs["action"].lookup_choices] == [
        "license.issued",
        "order.paid",
        "sku.activated",
        "sku.suspended",
    ]
    assert [value for value, _ in specs["subject type"].lookup_choices] == [
        "license",
        "order",
        "sku",
    ]
    assert "actor" not in specs  # shown only while in use


# Transactional: on PostgreSQL the tables' owner dates the events on their days (seal_dated).
@pytest.mark.django_db(transaction=True)
def test_the_date_range_includes_both_days(security_client, monkeypatch):
    # Days ahead of the real clock: an event is never earlier than the chain head's time.
    first = (timezone.now() + timedelta(days=30)).date()
    days = [first + timedelta(days=offset) for offset in (0, 4, 8)]
    for day in days:
        moment = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
        monkeypatch.setattr("django.utils.timezone.now", lambda moment=moment: moment)
        with transaction.atomic():
            event = audit_append(
                actor=Actor.system("test"), action="sku.activated", subject=("sku", day.isoformat())
            )
        monkeypatch.undo()
        seal_dated([event], moment)

    def between(start: date | None, end: date | None) -> list[int]:
        query = {
            "occurred_at__from": start.isoformat() if start else "",
            "occurred_at__to": end.isoformat() if end else "",
        }
        return listed(security_client.get(CHANGELIST, query))

    assert between(days[0], days[1]) == [2, 1]
    assert between(days[1], days[1]) == [2]
    assert between(days[1] + timedelta(days=1), None) == [3]
    assert between(None, days[1] - timedelta(days=1)) == [1]
    assert between(days[2] + timedelta(days=1), days[2] + timedelta(days=30)) == []


def test_a_date_that_is_not_one_is_reported_not_a_crash(security_client, events):
    response = security_client.get(f"{CHANGELIST}?occurred_at__from=yesterday")

    assert response.status_code == 302
    assert response["Location"].endswith("?e=1")


def test_lookups_the_filters_do_not_make_are_refused(security_client, events):
    # data__icontains would read every row of a table of millions.
    response = security_client.get(f"{CHANGELIST}?data__icontains=tool")

    assert response.status_code == 400


@pytest.mark.parametrize(
    ("term", "expected"),
    [
        ("o-1", [2]),
        ("7", [3, 1]),  # subject id 7 (there is no event #7)
        ("#3", [3]),
        ("4", [4]),
        ("worker", [5]),
        ("buyer@example.com", [4, 2]),
        ("BUYER@example.com", [4, 2]),
        ("o-", []),  # whole values only
        ("buyer@example", []),
    ],
)
def test_search_matches_whole_ids_emails_and_sequences(security_client, events, term, expected):
    assert listed(security_client.get(CHANGELIST, {"q": term})) == expected


def test_the_count_of_a_filtered_list_spans_its_pages(security_client):
    for index in range(80):
        append("order.paid" if index % 4 else "sku.activated", subject=("order", index))

    whole = security_client.get(CHANGELIST)
    filtered = security_client.get(f"{CHANGELIST}?action=order.paid&p=2")

    assert (whole.context["cl"].result_count, whole.context["cl"].paginator.num_pages) == (80, 2)
    assert (filtered.context["cl"].result_count, filtered.context["cl"].multi_page) == (60, True)
    # Sequences 1, 5, 9, ... are sku.activated; the second page holds the ten oldest others.
    assert listed(filtered) == [14, 12, 11, 10, 8, 7, 6, 4, 3, 2]


def test_the_unfiltered_list_is_counted_without_counting_rows(security_client, events):
    with CaptureQueriesContext(connection) as queries:
        response = security_client.get(CHANGELIST)

    assert response.context["cl"].result_count == 5
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    # Only the unsealed events are counted, through their partial index (audit.sealer).
    assert all('WHERE "audit_event"."sequence" IS NULL' in sql for sql in counts), counts


def test_the_number_of_queries_does_not_grow_with_the_page(security_client, buyer):
    def queries_for(count: int) -> int:
        for number in range(AuditEvent.objects.count(), count):
            # Every other event by a different staff user: one email to look up per event.
            actor = _staff(f"staff{number}@example.com", SECURITY) if number % 2 else buyer
            append("order.paid", actor=Actor.of_user(actor), subject=("order", number))
        with CaptureQueriesContext(connection) as queries:
            response = security_client.get(CHANGELIST)
        assert len(listed(response)) == count
        return len(queries.captured_queries)

    assert queries_for(5) == queries_for(50)


# --- The event's page ----------------------------------------------------------------------------


def test_an_events_page_shows_its_data_hashes_and_related_links(security_client, events, buyer):
    event = events[1]

    response = security_client.get(f"{CHANGELIST}{event.pk}/change/")

    assert response.status_code == 200
    page = response.content.decode()
    assert "{\n  &quot;amount&quot;: 1999\n}" in page  # pretty-printed
    assert event.prev_hash in page
    assert event.hash in page
    assert "buyer@example.com" in page
    assert response.context["subject_events_url"] == (
        f"{CHANGELIST}?subject_type=order&subject_id=o-1"
    )
    assert response.context["actor_events_url"] == (
        f"{CHANGELIST}?actor_type__exact=buyer&actor_id={buyer.uuid}"
    )
    assert 'name="_save"' not in page
    assert listed(security_client.get(response.context["actor_events_url"])) == [4, 2]


# --- Nobody changes anything -------------------------------------------------------------------


def test_a_superuser_cannot_add_change_or_delete_events(superuser_client, events):
    before = table_state()
    url = f"{CHANGELIST}{events[0].pk}/"

    assert superuser_client.get(f"{CHANGELIST}add/").status_code == 403
    assert superuser_client.post(f"{CHANGELIST}add/", {"action": "x"}).status_code == 403
    assert superuser_client.post(f"{url}change/", {"action": "forged"}).status_code == 403
    assert superuser_client.get(f"{url}delete/").status_code == 403
    assert superuser_client.post(f"{url}delete/", {"post": "yes"}).status_code == 403
    bulk = superuser_client.post(
        CHANGELIST, {"action": "delete_selected", "_selected_action": [1, 2], "post": "yes"}
    )

    assert bulk.status_code == 200
    assert bulk.context["action_form"] is None  # no actions at all, delete_selected included
    assert table_state() == before


@pytest.mark.parametrize("model", ["checkpoint", "auditexport"])
def test_a_superuser_cannot_add_change_or_delete_checkpoints_or_exports(superuser_client, model):
    append()
    checkpoint = checkpoint_create()
    export = AuditExport(
        day=date(2024, 3, 1),
        period_start=datetime(2024, 3, 1, tzinfo=UTC),
        period_end=datetime(2024, 3, 2, tzinfo=UTC),
        previous_sequence=0,
        first_sequence=1,
        last_sequence=1,
        event_count=1,
        file_sha256="a" * 64,
        file_size=100,
        digest_sha256="b" * 64,
        key_id="audit-1",
        location="s3://audit/2024-03-01.jsonl.gz",
    )
    export.save()
    pk = checkpoint.pk if model == "checkpoint" else export.pk
    base = f"/admin/audit/{model}/"

    assert superuser_client.get(f"{base}add/").status_code == 403
    assert superuser_client.post(f"{base}{pk}/change/", {"key_id": "x"}).status_code == 403
    assert superuser_client.post(f"{base}{pk}/delete/", {"post": "yes"}).status_code == 403
    listing = superuser_client.get(base)
    assert listing.status_code == 200
    assert [row.pk for row in listing.context["cl"].result_list] == [pk]
    assert superuser_client.get(f"{base}{pk}/change/").status_code == 200
    assert Checkpoint.objects.get().key_id == checkpoint.key_id
    assert AuditExport.objects.get().location == "s3://audit/2024-03-01.jsonl.gz"


# --- Verify and checkpoint -----------------------------------------------------------------------


def test_verify_says_ok_with_the_counts(security_client, events):
    checkpoint_create()  # its first use creates the audit key, which is an event too

    response = security_client.get(VERIFY)

    assert response.status_code == 200
    assert response.context["report"].ok
    page = response.content.decode()
    assert "OK: the chain is intact." in page
    assert response.context["report"].events == AuditEvent.objects.count() == 6
    assert response.context["report"].checkpoints == 1


# The owner's connection that tampers sees only committed rows.
@pytest.mark.django_db(transaction=True)
def test_verify_names_the_first_event_that_was_changed(security_client, events):
    owner_tamper("UPDATE audit_event SET data = %s WHERE sequence = 3", ['{"forged": true}'])

    response = security_client.get(VERIFY)

    assert response.status_code == 200
    failure = response.context["failure"]
    assert (failure.code, failure.sequence) == ("hash_mismatch", 3)
    page = response.content.decode()
    assert "FAILED" in page
    assert f'href="{CHANGELIST}{events[2].pk}/change/"' in page


def test_sign_a_checkpoint_now(security_client, events):
    response = security_client.post(CHECKPOINT)

    assert response.status_code == 302
    assert response["Location"] == "/admin/audit/checkpoint/"
    last = AuditEvent.objects.sealed().order_by("-sequence")[0]
    assert Checkpoint.objects.get().sequence == last.sequence
    again = security_client.post(CHECKPOINT, follow=True)
    assert "Nothing to sign" in " ".join(messages_of(again))
    assert Checkpoint.objects.count() == 1
    assert security_client.get(CHECKPOINT).status_code == 405


# --- Who may see it ----------------------------------------------------------------------------


@pytest.mark.parametrize("role_fixture", ["security_staff", "support_staff", "finance_staff"])
def test_security_support_and_finance_read_the_log_and_verify_it(
    client, events, role_fixture, request
):
    client.force_login(request.getfixturevalue(role_fixture))

    assert listed(client.get(CHANGELIST)) == [5, 4, 3, 2, 1]
    assert client.get(VERIFY).status_code == 200
    assert client.get("/admin/audit/checkpoint/").status_code == 200
    assert client.get("/admin/audit/auditexport/").status_code == 200


def test_only_security_signs_checkpoints(client, events, support_staff):
    client.force_login(support_staff)

    assert client.post(CHECKPOINT).status_code == 403
    assert "Sign a checkpoint now" not in client.get(CHANGELIST).content.decode()
    assert not Checkpoint.objects.exists()


def test_staff_without_the_permission_get_403_and_nothing_is_written(client, events, content_ops):
    client.force_login(content_ops)
    before = table_state()

    assert client.get(CHANGELIST).status_code == 403
    assert client.get(f"{CHANGELIST}1/change/").status_code == 403
    assert client.get(VERIFY).status_code == 403
    assert client.post(CHECKPOINT).status_code == 403
    assert not Checkpoint.objects.exists()
    assert table_state() == before
