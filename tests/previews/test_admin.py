"""Previews in the admin: uploading material (the service's refusals at their fields),
withdrawing it, the preview switch, the sessions list, revoking, isolating one SKU and lifting
the pause, and Partner staff seeing only their partner's SKUs."""

import io
import zipfile
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.messages import get_messages
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audit.models import AuditEvent
from catalog.models import Sku
from marketplace.models import User
from marketplace.roles import SECURITY, SUPPORT
from previews.models import (
    EndReason,
    MaterialKind,
    PreviewMaterial,
    PreviewPause,
    PreviewSession,
    SessionStatus,
)
from previews.sandbox import DEMO_SERVER
from previews.services import PreviewOpened, preview_open
from tests.catalog.factories import make_publisher, publish_sku
from tests.catalog.test_partner_staff_admin import partner_staff_user
from tests.conftest import _staff
from tests.previews.factories import INDEX, add_material, previewable_sku

pytestmark = pytest.mark.django_db

MATERIALS = "/admin/previews/previewmaterial/"
SESSIONS = "/admin/previews/previewsession/"
PAUSES = "/admin/previews/previewpause/"
ISOLATE = f"{SESSIONS}isolate/"
SERVER_LINE = "/usr/bin/python3 -I -B server.py"


def messages_of(response: Any) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def form_errors(response: Any) -> dict[str, list[str]]:
    return {
        name: list(errors) for name, errors in response.context["adminform"].form.errors.items()
    }


def stored_files() -> list[Path]:
    root = Path(settings.STORAGES["default"]["OPTIONS"]["location"]) / "previews"
    return [path for path in root.rglob("*") if path.is_file()] if root.exists() else []


def upload(name: str, content: bytes) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, content_type="application/octet-stream")


def a_zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def add_form(sku: Sku, **fields: Any) -> dict[str, Any]:
    return {"sku": sku.pk, "kind": "sample", "command": "", "entry": "", "note": ""} | fields


def opened(sku: Sku, buyer: User) -> PreviewOpened:
    return preview_open(buyer=buyer, sku_slug=sku.slug)


def open_sessions(sku: Sku, count: int) -> list[PreviewOpened]:
    first = PreviewSession.objects.count()
    return [
        opened(sku, User.objects.create_user(email=f"viewer{n}-{sku.slug}@example.com"))
        for n in range(first, first + count)
    ]


def run_action(client: Any, url: str, action: str, rows: list[Any], **data: Any) -> Any:
    return client.post(
        url, {"action": action, "_selected_action": [row.pk for row in rows], **data}
    )


@pytest.fixture
def ops_client(client: Any, content_ops: User) -> Any:
    client.force_login(content_ops)
    return client


@pytest.fixture
def security(db: None) -> User:
    return _staff("security@example.com", SECURITY)


@pytest.fixture
def security_client(client: Any, security: User) -> Any:
    client.force_login(security)
    return client


@pytest.fixture
def sku(db: None) -> Sku:
    return publish_sku(make_publisher(slug="acme", name="Acme Tools"), slug="acme-kit")


@pytest.fixture
def sample_sku(db: None) -> Sku:
    return previewable_sku(MaterialKind.SAMPLE, slug="sample-kit")


# --- Material ------------------------------------------------------------------------------------


def test_content_ops_upload_a_sample_and_it_is_the_skus_material(ops_client, sku, content_ops):
    answer = ops_client.post(
        f"{MATERIALS}add/",
        add_form(
            sku,
            files=[upload("index.html", INDEX), upload("notes.txt", b"notes")],
            note="first cut",
        ),
    )

    assert answer.status_code == 302, form_errors(answer)
    material = PreviewMaterial.objects.get(sku=sku)
    assert (material.version, material.kind, material.file_count) == (1, "sample", 2)
    assert material.entry == "index.html"  # taken as there is one
    assert material.note == "first cut"
    assert material.created_by == content_ops
    assert sorted(material.files.values_list("path", flat=True)) == ["index.html", "notes.txt"]
    event = AuditEvent.objects.get(action="preview.material_added")
    assert event.data["version"] == 1
    assert event.actor_id == str(content_ops.uuid)
    # The SKU's preview is still off: the admin says where to switch it on.
    assert any("is off: switch it on" in text for text in messages_of(answer))
    page = ops_client.get(answer.url)
    assert page.status_code == 200
    assert b"acme-kit" in page.content


def test_a_zip_is_expanded_into_a_sandboxs_files_with_the_command_split(ops_client, sku):
    archive = a_zip(
        {
            "index.html": INDEX,
            "server.py": DEMO_SERVER.read_bytes(),
            "assets/app.js": b"console.log('preview')",
        }
    )
    answer = ops_client.post(
        f"{MATERIALS}add/",
        add_form(sku, kind="sandbox", files=[upload("site.zip", archive)], command=SERVER_LINE),
    )

    assert answer.status_code == 302, form_errors(answer)
    material = PreviewMaterial.objects.get(sku=sku)
    assert material.kind == MaterialKind.SANDBOX
    assert material.command == ["/usr/bin/python3", "-I", "-B", "server.py"]
    assert sorted(material.files.values_list("path", flat=True)) == [
        "assets/app.js",
        "index.html",
        "server.py",
    ]
    # Its read-only page lists the files.
    page = ops_client.get(f"{MATERIALS}{material.pk}/change/")
    assert page.status_code == 200
    assert b"assets/app.js" in page.content
    assert b'name="_save"' not in page.content


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"command": SERVER_LINE}, "command", "A sample has no command."),
        ({"kind": "sandbox"}, "command", "A sandbox needs the command"),
        ({"files": []}, "files", "Upload at least one file."),
        ({"entry": "missing.html"}, "entry", "'missing.html' is not one of the uploaded files."),
        (
            {"kind": "sandbox", "command": "python3 'server.py"},
            "command",
            "The command cannot be split into arguments",
        ),
        ({"files": [upload("broken.zip", b"not a zip")]}, "files", "not a readable zip archive"),
        (
            {"files": [upload("site.zip", a_zip({"../escape.txt": b"x"}))]},
            "files",
            "Unsafe file name: '../escape.txt'.",
        ),
    ],
)
def test_a_refused_upload_shows_the_error_at_its_field_and_stores_nothing(
    ops_client, sku, fields, field, message
):
    data = add_form(sku, files=[upload("index.html", INDEX)]) | fields

    answer = ops_client.post(f"{MATERIALS}add/", data)

    assert answer.status_code == 200
    errors = form_errors(answer)
    assert list(errors) == [field], errors
    assert message in errors[field][0]
    assert not PreviewMaterial.objects.exists()
    assert not AuditEvent.objects.filter(action="preview.material_added").exists()
    assert stored_files() == []


def test_the_add_form_offers_no_retired_sku(ops_client, sku):
    retired = publish_sku(make_publisher(slug="gone"), slug="gone-kit")
    Sku.objects.filter(pk=retired.pk).update(status="retired")

    page = ops_client.get(f"{MATERIALS}add/")

    choices = {value for value, _ in page.context["adminform"].form.fields["sku"].choices if value}
    assert {str(choice) for choice in choices} == {str(sku.pk)}


def test_withdraw_asks_for_a_reason_then_ends_the_versions_sessions(ops_client, sample_sku, buyer):
    material = PreviewMaterial.objects.get(sku=sample_sku)
    opened(sample_sku, buyer)

    asked = run_action(ops_client, MATERIALS, "withdraw", [material])
    assert asked.status_code == 200
    assert b"Reason" in asked.content
    material.refresh_from_db()
    assert material.withdrawn_at is None

    done = run_action(
        ops_client, MATERIALS, "withdraw", [material], apply="Confirm", reason="wrong files"
    )

    assert done.status_code == 302
    material.refresh_from_db()
    assert material.withdrawn_at is not None
    session = PreviewSession.objects.get(sku=sample_sku)
    assert (session.status, session.end_reason) == (SessionStatus.ENDED, EndReason.REVOKED)
    sample_sku.refresh_from_db()
    assert sample_sku.preview_enabled is False  # no current material is left
    assert messages_of(done) == ["1 material version(s) withdrawn."]


def test_switching_on_without_material_is_refused_with_the_reason(ops_client, sku):
    answer = ops_client.post(f"{MATERIALS}sku/{sku.pk}/", {"enabled": "1"}, follow=True)

    assert answer.status_code == 200
    assert messages_of(answer) == [
        "acme-kit: The preview of acme-kit cannot be switched on: it has no preview material: "
        "upload a sample or a sandbox first."
    ]
    sku.refresh_from_db()
    assert sku.preview_enabled is False
    assert not AuditEvent.objects.filter(action="sku.preview_enabled").exists()
    assert b"it has no preview material" in answer.content  # the page says why, too


def test_switching_on_with_material_then_off_ends_its_sessions(ops_client, sku, buyer):
    add_material(sku, MaterialKind.SAMPLE)
    page = f"{MATERIALS}sku/{sku.pk}/"

    on = ops_client.post(page, {"enabled": "1"}, follow=True)
    assert messages_of(on) == ["The preview of acme-kit is on."]
    sku.refresh_from_db()
    assert sku.preview_enabled is True
    opened(sku, buyer)

    off = ops_client.post(page, {"enabled": "0"}, follow=True)

    assert messages_of(off) == ["The preview of acme-kit is off."]
    session = PreviewSession.objects.get(sku=sku)
    assert (session.status, session.end_reason) == (SessionStatus.ENDED, EndReason.REVOKED)


def test_the_switch_actions_report_per_sku(ops_client, sku, sample_sku):
    material = add_material(sku, MaterialKind.SAMPLE)
    run_action(ops_client, MATERIALS, "withdraw", [material], apply="Confirm", reason="x")

    answer = run_action(
        ops_client,
        MATERIALS,
        "preview_on",
        [material, PreviewMaterial.objects.get(sku=sample_sku)],
        follow=True,
    )

    # One message per SKU, in the order of their ids: refused with the reason, or its state.
    assert messages_of(answer)[-2:] == [
        "acme-kit: The preview of acme-kit cannot be switched on: it has no preview material: "
        "upload a sample or a sandbox first.",
        "The preview of sample-kit is on.",
    ]


def test_support_and_security_read_material_but_do_not_manage_it(client, sample_sku):
    client.force_login(_staff("support@example.com", SUPPORT))
    material = PreviewMaterial.objects.get(sku=sample_sku)

    assert client.get(MATERIALS).status_code == 200
    assert client.get(f"{MATERIALS}add/").status_code == 403
    refused = client.post(f"{MATERIALS}sku/{sample_sku.pk}/", {"enabled": "0"})
    assert refused.status_code == 403
    run_action(client, MATERIALS, "withdraw", [material], apply="Confirm", reason="x")
    material.refresh_from_db()
    assert material.withdrawn_at is None
    sample_sku.refresh_from_db()
    assert sample_sku.preview_enabled is True


# --- Sessions -----------------------------------------------------------------------------------


def test_the_sessions_list_takes_as_many_queries_for_many_rows_as_for_few(
    security_client, sample_sku, settings
):
    settings.PREVIEW_CAPACITY = 100
    open_sessions(sample_sku, 2)
    with CaptureQueriesContext(connection) as few:
        assert security_client.get(SESSIONS).status_code == 200
    open_sessions(sample_sku, 12)

    with CaptureQueriesContext(connection) as many:
        page = security_client.get(SESSIONS)

    assert page.context["cl"].result_count == 14
    assert len(many.captured_queries) == len(few.captured_queries)
    assert b"viewer13-sample-kit@example.com" in page.content


def test_sessions_are_found_by_id_slug_and_buyer_and_filtered_by_status(
    security_client, sample_sku, buyer
):
    mine = opened(sample_sku, buyer).session
    other = open_sessions(sample_sku, 1)[0].session

    def found(**query: str) -> set[Any]:
        return {row.pk for row in security_client.get(SESSIONS, query).context["cl"].result_list}

    assert found(q=str(mine.pk)) == {mine.pk}
    assert found(q="buyer@example.com") == {mine.pk}
    assert found(q="sample-kit") == {mine.pk, other.pk}
    assert found(status="ready") == {mine.pk, other.pk}
    assert found(status="ended") == set()


def test_sessions_cannot_be_added_changed_or_deleted(security_client, sample_sku, buyer):
    session = opened(sample_sku, buyer).session

    assert security_client.get(f"{SESSIONS}add/").status_code == 403
    assert security_client.get(f"{SESSIONS}{session.pk}/delete/").status_code == 403
    page = security_client.get(f"{SESSIONS}{session.pk}/change/")
    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    assert b"buyer@example.com" in page.content


def test_revoking_from_the_admin_makes_the_link_410_at_once(
    security_client, sample_sku, buyer, client
):
    preview = opened(sample_sku, buyer)
    assert client.get(f"/previews/{preview.token}/").status_code == 200

    asked = run_action(security_client, SESSIONS, "revoke", [preview.session])
    assert asked.status_code == 200  # the reason is asked on a page of its own
    assert PreviewSession.objects.get().status == SessionStatus.READY

    done = run_action(
        security_client,
        SESSIONS,
        "revoke",
        [preview.session],
        apply="Confirm",
        reason="leaked link",
    )

    assert done.status_code == 302
    assert messages_of(done) == ["1 session(s) revoked."]
    gone = client.get(f"/previews/{preview.token}/")
    assert gone.status_code == 410
    assert gone.json()["reason"] == "revoked"
    session = PreviewSession.objects.get()
    assert (session.end_reason, session.end_detail) == (EndReason.REVOKED, "leaked link")
    event = AuditEvent.objects.get(action="preview.ended")
    assert event.data == {"reason": "revoked", "detail": "leaked link"}


def test_support_may_revoke_and_content_ops_may_not(client, content_ops, sample_sku, buyer):
    preview = opened(sample_sku, buyer)
    client.force_login(content_ops)

    refused = run_action(client, SESSIONS, "revoke", [preview.session], apply="Confirm", reason="x")

    assert refused.status_code == 200  # the changelist again: no such action for them
    assert PreviewSession.objects.get().status == SessionStatus.READY
    assert not AuditEvent.objects.filter(action="preview.ended").exists()

    client.force_login(_staff("support@example.com", SUPPORT))
    run_action(client, SESSIONS, "revoke", [preview.session], apply="Confirm", reason="ticket 42")
    assert PreviewSession.objects.get().status == SessionStatus.ENDED


def test_isolating_one_sku_pauses_it_until_the_pause_is_lifted(
    security_client, security, sample_sku, buyer, buyer_client, api_client
):
    other = previewable_sku(MaterialKind.SAMPLE, slug="other-kit")
    preview = opened(sample_sku, buyer)
    untouched = opened(other, User.objects.create_user(email="else@example.com")).session
    form = security_client.get(ISOLATE)
    assert form.context["form"]["pause"].value() is True  # pausing is the default

    done = security_client.post(
        ISOLATE, {"sku": sample_sku.pk, "reason": "breakout suspected", "pause": "on"}
    )

    assert done.status_code == 302
    assert messages_of(done) == [
        "sample-kit isolated: 1 session(s) revoked; new sessions are paused until the pause "
        "is lifted."
    ]
    assert api_client.get(f"/previews/{preview.token}/").status_code == 410
    untouched.refresh_from_db()
    assert untouched.status == SessionStatus.READY
    pause = PreviewPause.objects.get()
    assert (pause.sku, pause.reason, pause.created_by) == (
        sample_sku,
        "breakout suspected",
        security,
    )
    refused = buyer_client.post(f"/api/v1/skus/{sample_sku.slug}/previews")
    assert refused.status_code == 503
    assert refused.json()["type"].endswith("previews-paused")
    # The sessions list says what is paused.
    assert b"New previews are paused for" in security_client.get(SESSIONS).content

    lifted = run_action(security_client, PAUSES, "lift", [pause])

    assert messages_of(lifted) == ["1 pause(s) lifted."]
    pause.refresh_from_db()
    assert (pause.lifted_at is not None, pause.lifted_by) == (True, security)
    assert buyer_client.post(f"/api/v1/skus/{sample_sku.slug}/previews").status_code == 201
    assert AuditEvent.objects.filter(action="preview.pause_lifted").count() == 1


def test_isolating_without_pausing_takes_new_sessions(security_client, sample_sku, buyer_client):
    security_client.post(ISOLATE, {"sku": sample_sku.pk, "reason": "rotate"})

    assert not PreviewPause.objects.exists()
    assert buyer_client.post(f"/api/v1/skus/{sample_sku.slug}/previews").status_code == 201


def test_isolating_needs_a_reason(security_client, sample_sku, buyer):
    opened(sample_sku, buyer)

    answer = security_client.post(ISOLATE, {"sku": sample_sku.pk, "reason": "  ", "pause": "on"})

    assert answer.status_code == 200
    assert answer.context["form"].errors == {"reason": ["This field is required."]}
    assert PreviewSession.objects.get().status == SessionStatus.READY
    assert not PreviewPause.objects.exists()


def test_only_security_isolates_and_lifts(client, content_ops, sample_sku, buyer):
    opened(sample_sku, buyer)
    client.force_login(_staff("support@example.com", SUPPORT))

    assert client.get(ISOLATE).status_code == 403
    assert client.post(ISOLATE, {"sku": sample_sku.pk, "reason": "x"}).status_code == 403
    assert b"Isolate pool" not in client.get(SESSIONS).content
    assert PreviewSession.objects.get().status == SessionStatus.READY

    pause = PreviewPause.objects.create(sku=sample_sku, reason="held")
    run_action(client, PAUSES, "lift", [pause])
    pause.refresh_from_db()
    assert pause.lifted_at is None


# --- Partner staff -------------------------------------------------------------------------------


@pytest.fixture
def two_partners(db: None) -> dict[str, Sku]:
    acme, beta = make_publisher(slug="acme", name="Acme"), make_publisher(slug="beta", name="Beta")
    skus = {
        "acme": publish_sku(acme, slug="acme-kit"),
        "beta": publish_sku(beta, slug="beta-secret-kit"),
    }
    for sku in skus.values():
        add_material(sku, MaterialKind.SAMPLE)
    return skus


@pytest.fixture
def member_client(client: Any, two_partners: dict[str, Sku]) -> Any:
    client.force_login(partner_staff_user("staff@acme.example", "acme"))
    return client


def test_partner_staff_see_only_their_partners_material_and_sessions(
    member_client, two_partners, settings
):
    for sku in two_partners.values():
        Sku.objects.filter(pk=sku.pk).update(preview_enabled=True)
    buyers = [User.objects.create_user(email=f"b{n}@example.com") for n in range(2)]
    acme_session = opened(two_partners["acme"], buyers[0]).session
    beta_session = opened(two_partners["beta"], buyers[1]).session

    materials = member_client.get(MATERIALS)
    sessions = member_client.get(SESSIONS)

    assert {m.sku.slug for m in materials.context["cl"].result_list} == {"acme-kit"}
    assert {s.pk for s in sessions.context["cl"].result_list} == {acme_session.pk}
    for page in (materials, sessions):
        assert b"beta-secret-kit" not in page.content
    # Without the buyers: no email column, no search by it.
    assert b"b0@example.com" not in sessions.content
    by_buyer = member_client.get(SESSIONS, {"q": "b0@example.com"})
    assert list(by_buyer.context["cl"].result_list) == []
    assert member_client.get(f"{SESSIONS}{beta_session.pk}/change/").status_code == 302
    detail = member_client.get(f"{SESSIONS}{acme_session.pk}/change/")
    assert b"b0@example.com" not in detail.content
    beta_material = PreviewMaterial.objects.get(sku=two_partners["beta"])
    assert member_client.get(f"{MATERIALS}{beta_material.pk}/change/").status_code == 302
    assert member_client.get(f"{MATERIALS}sku/{two_partners['beta'].pk}/").status_code == 404


def test_partner_staff_upload_only_to_their_partners_skus(member_client, two_partners):
    beta = two_partners["beta"]
    form = member_client.get(f"{MATERIALS}add/").context["adminform"].form
    assert {str(v) for v, _ in form.fields["sku"].choices if v} == {str(two_partners["acme"].pk)}

    refused = member_client.post(
        f"{MATERIALS}add/", add_form(beta, files=[upload("index.html", INDEX)])
    )

    assert refused.status_code == 200
    assert list(form_errors(refused)) == ["sku"]
    assert PreviewMaterial.objects.filter(sku=beta).count() == 1
    added = member_client.post(
        f"{MATERIALS}add/", add_form(two_partners["acme"], files=[upload("index.html", INDEX)])
    )
    assert added.status_code == 302
    assert PreviewMaterial.objects.filter(sku=two_partners["acme"]).count() == 2


def test_partner_staff_switch_their_own_skus_preview_only(member_client, two_partners):
    beta = two_partners["beta"]
    beta_material = PreviewMaterial.objects.get(sku=beta)

    run_action(member_client, MATERIALS, "preview_on", [beta_material])
    member_client.post(f"{MATERIALS}sku/{beta.pk}/", {"enabled": "1"})
    beta.refresh_from_db()
    assert beta.preview_enabled is False

    member_client.post(f"{MATERIALS}sku/{two_partners['acme'].pk}/", {"enabled": "1"})
    assert Sku.objects.get(pk=two_partners["acme"].pk).preview_enabled is True
