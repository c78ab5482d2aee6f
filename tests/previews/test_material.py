"""Preview material (preview_material_add, preview_material_withdraw) and the SKU's preview
switch (sku_preview_set)."""

import hashlib
import io
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import default_storage
from django.test import Client

from audit.models import AuditEvent
from catalog.models import Sku
from catalog.services import sku_retire
from previews.exceptions import InvalidMaterial, PreviewRefused
from previews.models import EndReason, MaterialKind, PreviewFile, PreviewMaterial, PreviewSession
from previews.services import (
    Upload,
    preview_material_add,
    preview_material_withdraw,
    preview_open,
    sku_preview_set,
)
from tests.catalog.factories import TEST_ACTOR, make_publisher, publish_sku
from tests.previews.factories import (
    INDEX,
    SERVER_COMMAND,
    add_material,
    previewable_sku,
    sandbox_uploads,
)

NOTES = b"0123456789" * 100


@pytest.fixture
def sku(db: None) -> Sku:
    return publish_sku(make_publisher())


def stored_files(settings: Any) -> set[str]:
    """Every file in this test's storage folder, relative to it."""
    root = Path(settings.STORAGES["default"]["OPTIONS"]["location"])
    return {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()}


def digest_of(files: dict[str, bytes]) -> str:
    listing = "".join(
        f"{hashlib.sha256(content).hexdigest()}  {path}\n"
        for path, content in sorted(files.items())
    )
    return hashlib.sha256(listing.encode()).hexdigest()


def zipped(entries: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, content in entries.items():
            archive.writestr(zipfile.ZipInfo(name), content, compress_type=compression)
    buffer.seek(0)
    return buffer


def add(sku: Sku, kind: str, uploads: list[Upload], **kwargs: Any) -> PreviewMaterial:
    return preview_material_add(
        sku_id=sku.pk, kind=kind, uploads=uploads, actor=TEST_ACTOR, **kwargs
    )


def events_after(mark: int) -> list[tuple[str, dict[str, Any]]]:
    return [
        (event.action, event.data)
        for event in AuditEvent.objects.filter(pk__gt=mark).order_by("pk")
    ]


def last_event() -> int:
    return AuditEvent.objects.order_by("-pk").values_list("pk", flat=True).first() or 0


# --- Adding material ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_sample_is_stored_hashed_as_version_one_and_audited(sku):
    mark = last_event()

    material = add(
        sku,
        MaterialKind.SAMPLE,
        [Upload("index.html", io.BytesIO(INDEX)), Upload("notes.txt", io.BytesIO(NOTES))],
        note="  first cut  ",
    )

    assert material.version == 1
    assert material.kind == MaterialKind.SAMPLE
    assert material.command == []
    assert material.entry == "index.html"  # a sample's index.html opens it unless told
    assert material.note == "first cut"
    assert material.digest == digest_of({"index.html": INDEX, "notes.txt": NOTES})
    assert (material.file_count, material.size) == (2, len(INDEX) + len(NOTES))
    files = list(PreviewFile.objects.filter(material=material).order_by("path"))
    assert [(f.path, f.content_type, f.size) for f in files] == [
        ("index.html", "text/html; charset=utf-8", len(INDEX)),
        ("notes.txt", "text/plain; charset=utf-8", len(NOTES)),
    ]
    for item, content in zip(files, [INDEX, NOTES], strict=True):
        assert item.sha256 == hashlib.sha256(content).hexdigest()
        assert item.storage_key.startswith("previews/")
        with default_storage.open(item.storage_key, "rb") as stored:
            assert stored.read() == content
    assert events_after(mark) == [
        (
            "preview.material_added",
            {
                "material": str(material.uuid),
                "version": 1,
                "kind": "sample",
                "digest": material.digest,
                "files": 2,
                "size": len(INDEX) + len(NOTES),
                "command": [],
                "entry": "index.html",
            },
        )
    ]
    added = AuditEvent.objects.get(action="preview.material_added")
    assert (added.subject_type, added.subject_id) == ("sku", str(sku.pk))


@pytest.mark.django_db
def test_a_sandbox_is_the_next_version_with_its_command(sku):
    add_material(sku, MaterialKind.SAMPLE)
    uploads = sandbox_uploads()
    contents = {u.name: u.content.getvalue() for u in uploads}

    material = add(sku, MaterialKind.SANDBOX, uploads, command=SERVER_COMMAND)
    third = add_material(sku, MaterialKind.SANDBOX)

    assert material.version == 2
    assert third.version == 3
    assert material.kind == MaterialKind.SANDBOX
    assert material.command == SERVER_COMMAND
    assert material.entry == ""  # a sandbox serves its own pages
    assert material.digest == digest_of(contents)
    assert sorted(PreviewFile.objects.filter(material=material).values_list("path", "sha256")) == [
        (name, hashlib.sha256(content).hexdigest()) for name, content in sorted(contents.items())
    ]


@pytest.mark.django_db
def test_a_zip_is_expanded_with_its_paths_kept(sku):
    entries = {
        "index.html": INDEX,
        "assets/app.js": b"console.log(1)",
        "assets/img/logo.svg": b"<svg/>",
        "./docs/read me.txt": b"docs",
    }
    archive = zipped(entries)
    with zipfile.ZipFile(archive, "a") as more:
        more.writestr(zipfile.ZipInfo("empty-folder/"), b"")
    archive.seek(0)

    material = add(
        sku,
        MaterialKind.SAMPLE,
        [Upload("site.zip", archive), Upload("extra.css", io.BytesIO(b"p{}"))],
    )

    paths = dict(PreviewFile.objects.filter(material=material).values_list("path", "content_type"))
    assert paths == {
        "assets/app.js": "text/javascript; charset=utf-8",
        "assets/img/logo.svg": "image/svg+xml",
        "docs/read me.txt": "text/plain; charset=utf-8",
        "extra.css": "text/css; charset=utf-8",
        "index.html": "text/html; charset=utf-8",
    }
    assert material.digest == digest_of(
        {
            "assets/app.js": b"console.log(1)",
            "assets/img/logo.svg": b"<svg/>",
            "docs/read me.txt": b"docs",
            "extra.css": b"p{}",
            "index.html": INDEX,
        }
    )
    assert material.entry == "index.html"


# --- Refused material --------------------------------------------------------------------------


def refused(
    settings: Any, sku: Sku, kind: str, uploads: list[Upload], **kwargs: Any
) -> InvalidMaterial:
    """Adds what must be refused; checks that nothing was stored, recorded or audited."""
    files, mark = stored_files(settings), last_event()
    with pytest.raises(InvalidMaterial) as caught:
        add(sku, kind, uploads, **kwargs)
    assert stored_files(settings) == files
    assert PreviewMaterial.objects.filter(sku=sku).count() == 0
    assert PreviewFile.objects.count() == 0
    assert last_event() == mark
    return caught.value


@pytest.mark.django_db
@pytest.mark.parametrize(
    "name",
    ["../evil", "/etc/passwd", "a/../../evil", "..\\evil", "ok/\x07bell", "~/.ssh/id"],
    ids=["dotdot", "absolute", "nested-dotdot", "backslash", "control", "tilde"],
)
def test_a_zip_entry_escaping_its_folder_is_refused_and_nothing_is_kept(settings, sku, name):
    # A good file comes first, so it is stored before the bad one is seen and must be removed.
    archive = zipped({"index.html": INDEX, name: b"pwned"})

    error = refused(settings, sku, MaterialKind.SAMPLE, [Upload("site.zip", archive)])

    assert error.errors == {"files": [f"Unsafe file name: {name!r}."]}


@pytest.mark.django_db
def test_a_zip_bomb_is_refused(settings, sku):
    archive = zipped({"index.html": INDEX, "zeros.bin": b"\0" * 10_000_000})

    error = refused(settings, sku, MaterialKind.SAMPLE, [Upload("bomb.zip", archive)])

    assert error.errors == {"files": ["A zip entry is compressed beyond belief."]}
    assert "zeros.bin in bomb.zip" in error.detail


@pytest.mark.django_db
def test_a_zip_that_unpacks_past_the_size_limit_is_refused(settings, sku):
    settings.PREVIEW_MATERIAL_MAX_BYTES = 1500
    # Random bytes do not compress, so no ratio gives them away: the unpacked count does.
    archive = zipped({"a.bin": os.urandom(1000), "b.bin": os.urandom(1000)})

    error = refused(settings, sku, MaterialKind.SAMPLE, [Upload("big.zip", archive)])

    assert error.errors == {"files": ["The files are too large."]}


@pytest.mark.django_db
@pytest.mark.parametrize("sizes", [[1001], [600, 600]], ids=["one-file", "in-all"])
def test_files_past_the_size_limit_are_refused(settings, sku, sizes):
    settings.PREVIEW_MATERIAL_MAX_BYTES = 1000
    uploads = [Upload(f"{n}.bin", io.BytesIO(b"x" * size)) for n, size in enumerate(sizes)]

    error = refused(settings, sku, MaterialKind.SAMPLE, uploads)

    assert error.errors == {"files": ["The files are too large."]}


@pytest.mark.django_db
def test_material_of_exactly_the_size_limit_is_taken(settings, sku):
    settings.PREVIEW_MATERIAL_MAX_BYTES = 1000
    uploads = [Upload("a.bin", io.BytesIO(b"x" * 400)), Upload("b.bin", io.BytesIO(b"x" * 600))]

    assert add(sku, MaterialKind.SAMPLE, uploads).size == 1000


@pytest.mark.django_db
def test_too_many_files_are_refused(settings, sku):
    settings.PREVIEW_MATERIAL_MAX_FILES = 2
    uploads = [Upload(f"{n}.txt", io.BytesIO(b"x")) for n in range(3)]

    error = refused(settings, sku, MaterialKind.SAMPLE, uploads)

    assert error.errors == {"files": ["Too many files."]}


@pytest.mark.django_db
def test_two_files_with_one_path_are_refused(settings, sku):
    uploads = [
        Upload("site.zip", zipped({"index.html": INDEX})),
        Upload("index.html", io.BytesIO(b"other")),
    ]

    error = refused(settings, sku, MaterialKind.SAMPLE, uploads)

    assert error.errors == {"files": ["Duplicate paths: index.html."]}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("uploads", "message"),
    [
        ([], "Upload at least one file."),
        ([Upload("empty.zip", zipped({}))], "The zip holds no files."),
        (
            [Upload("broken.zip", io.BytesIO(b"not a zip"))],
            "broken.zip is not a readable zip archive.",
        ),
    ],
    ids=["none", "empty-zip", "not-a-zip"],
)
def test_material_without_files_is_refused(settings, sku, uploads, message):
    error = refused(settings, sku, MaterialKind.SAMPLE, uploads)

    assert error.errors == {"files": [message]}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("command", "problem"),
    [
        (None, "A sandbox needs the command that serves its files over HTTP."),
        ([], "A sandbox needs the command that serves its files over HTTP."),
        (["python3"] * 33, "The command takes at most 32 arguments."),
        (["python3", ""], "Each argument is 1 to 500 characters."),
        (["python3", "x" * 501], "Each argument is 1 to 500 characters."),
        (["python3", "a\x00b"], "The command's arguments are printable characters only."),
        (["python3", "a\nb"], "The command's arguments are printable characters only."),
    ],
    ids=["none", "empty", "too-many", "empty-arg", "long-arg", "nul", "newline"],
)
def test_a_sandbox_without_a_sound_command_is_refused(settings, sku, command, problem):
    error = refused(settings, sku, MaterialKind.SANDBOX, sandbox_uploads(), command=command)

    assert error.errors == {"command": [problem]}


@pytest.mark.django_db
def test_a_sample_with_a_command_is_refused(settings, sku):
    error = refused(
        settings,
        sku,
        MaterialKind.SAMPLE,
        [Upload("index.html", io.BytesIO(INDEX))],
        command=SERVER_COMMAND,
    )

    assert error.errors == {"command": ["A sample has no command."]}


@pytest.mark.django_db
def test_an_entry_that_is_not_among_the_files_is_refused(settings, sku):
    error = refused(
        settings,
        sku,
        MaterialKind.SAMPLE,
        [Upload("index.html", io.BytesIO(INDEX))],
        entry="start.html",
    )

    assert error.errors == {"entry": ["'start.html' is not one of the uploaded files."]}


@pytest.mark.django_db
def test_an_unknown_kind_is_refused(settings, sku):
    error = refused(settings, sku, "binary", [Upload("index.html", io.BytesIO(INDEX))])

    assert error.errors == {"kind": ["Choose sample or sandbox."]}


@pytest.mark.django_db
def test_a_retired_skus_preview_cannot_change(settings, sku):
    sku_retire(sku_id=sku.pk, reason="end of life", actor=TEST_ACTOR)
    files, mark = stored_files(settings), last_event()

    with pytest.raises(PreviewRefused) as caught:
        add_material(sku, MaterialKind.SAMPLE)

    assert caught.value.detail == f"{sku.slug} is retired: its preview can no longer change."
    assert stored_files(settings) == files
    assert PreviewMaterial.objects.count() == 0
    assert last_event() == mark


# --- The SKU's preview switch ------------------------------------------------------------------


@pytest.mark.django_db
def test_the_preview_is_switched_on_only_with_material(sku):
    mark = last_event()

    with pytest.raises(PreviewRefused) as caught:
        sku_preview_set(sku_id=sku.pk, enabled=True, actor=TEST_ACTOR)

    assert caught.value.extra["reasons"] == [
        "it has no preview material: upload a sample or a sandbox first"
    ]
    sku.refresh_from_db()
    assert sku.preview_enabled is False
    assert last_event() == mark

    add_material(sku, MaterialKind.SAMPLE)
    mark = last_event()
    sku_preview_set(sku_id=sku.pk, enabled=True, actor=TEST_ACTOR)
    sku_preview_set(sku_id=sku.pk, enabled=True, actor=TEST_ACTOR)  # unchanged: not recorded

    sku.refresh_from_db()
    assert sku.preview_enabled is True
    assert events_after(mark) == [("sku.preview_enabled", {"material_version": 1, "why": ""})]


@pytest.mark.django_db
def test_switching_the_preview_off_revokes_its_open_sessions(client, buyer):
    sku = previewable_sku(MaterialKind.SAMPLE)
    opened = preview_open(buyer=buyer, sku_slug=sku.slug)
    mark = last_event()

    sku_preview_set(sku_id=sku.pk, enabled=False, actor=TEST_ACTOR)

    detail = f"the preview of {sku.slug} was switched off"
    assert events_after(mark) == [
        ("sku.preview_disabled", {"material_version": 1, "why": ""}),
        ("preview.ended", {"reason": "revoked", "detail": detail}),
    ]
    assert client.get(f"/previews/{opened.token}/").json()["reason"] == "revoked"


@pytest.mark.django_db
def test_a_retired_skus_preview_cannot_be_switched_on(sku):
    add_material(sku, MaterialKind.SAMPLE)
    sku_retire(sku_id=sku.pk, reason="end of life", actor=TEST_ACTOR)

    with pytest.raises(PreviewRefused) as caught:
        sku_preview_set(sku_id=sku.pk, enabled=True, actor=TEST_ACTOR)

    assert caught.value.extra["reasons"] == [f"{sku.slug} is retired"]


# --- New versions and withdrawals --------------------------------------------------------------


@pytest.mark.django_db
def test_a_new_version_ends_the_old_versions_sessions_only(client, buyer, other_buyer):
    sku = previewable_sku(MaterialKind.SAMPLE)
    elsewhere = previewable_sku(MaterialKind.SAMPLE)
    mine = preview_open(buyer=buyer, sku_slug=sku.slug)
    theirs = preview_open(buyer=other_buyer, sku_slug=sku.slug)
    kept = preview_open(buyer=buyer, sku_slug=elsewhere.slug)
    mark = last_event()

    material = add_material(sku, MaterialKind.SAMPLE)

    detail = "preview material v2 replaced the version it ran"
    events = events_after(mark)
    assert events[0][0] == "preview.material_added"
    assert events[1:] == [("preview.ended", {"reason": "rotated", "detail": detail})] * 2
    ended = PreviewSession.objects.filter(pk__in=[mine.session.pk, theirs.session.pk])
    assert set(ended.values_list("status", "end_reason")) == {("ended", "rotated")}
    for opened in (mine, theirs):
        page = client.get(f"/previews/{opened.token}/")
        assert (page.status_code, page.json()["reason"]) == (410, "rotated")
        assert page.json()["detail"] == "The preview was replaced by newer preview material."
    assert PreviewSession.objects.get(pk=kept.session.pk).is_open()
    assert client.get(f"/previews/{kept.token}/").status_code == 200
    # A new session runs the new version.
    again = preview_open(buyer=buyer, sku_slug=sku.slug)
    assert again.session.material == material


@pytest.mark.django_db
def test_withdrawing_the_only_version_switches_the_preview_off(client, buyer):
    sku = previewable_sku(MaterialKind.SAMPLE)
    material = PreviewMaterial.objects.get(sku=sku)
    opened = preview_open(buyer=buyer, sku_slug=sku.slug)
    mark = last_event()

    preview_material_withdraw(material_id=material.pk, reason="leaked a key", actor=TEST_ACTOR)

    sku.refresh_from_db()
    assert sku.preview_enabled is False
    material.refresh_from_db()
    assert material.withdrawn_at is not None
    assert events_after(mark) == [
        (
            "preview.material_withdrawn",
            {"material": str(material.uuid), "version": 1, "reason": "leaked a key"},
        ),
        (
            "preview.ended",
            {"reason": "revoked", "detail": "preview material v1 was withdrawn: leaked a key"},
        ),
        (
            "sku.preview_disabled",
            {"material_version": None, "why": "its last material was withdrawn"},
        ),
    ]
    page = client.get(f"/previews/{opened.token}/")
    assert (page.status_code, page.json()["reason"]) == (410, "revoked")
    # And it stays off: there is nothing to switch it on with.
    with pytest.raises(PreviewRefused):
        sku_preview_set(sku_id=sku.pk, enabled=True, actor=TEST_ACTOR)
    # A second withdrawal changes nothing.
    mark = last_event()
    preview_material_withdraw(material_id=material.pk, reason="again", actor=TEST_ACTOR)
    assert last_event() == mark


@pytest.mark.django_db
def test_withdrawing_the_newest_version_falls_back_to_the_one_before(buyer):
    sku = previewable_sku(MaterialKind.SAMPLE)
    newest = add_material(sku, MaterialKind.SAMPLE)
    opened = preview_open(buyer=buyer, sku_slug=sku.slug)
    assert opened.session.material == newest

    preview_material_withdraw(material_id=newest.pk, reason="broken page", actor=TEST_ACTOR)

    sku.refresh_from_db()
    assert sku.preview_enabled is True
    assert PreviewSession.objects.get(pk=opened.session.pk).end_reason == EndReason.REVOKED
    assert preview_open(buyer=buyer, sku_slug=sku.slug).session.material.version == 1


@pytest.mark.django_db
def test_a_withdrawal_says_why(sku):
    material = add_material(sku, MaterialKind.SAMPLE)
    mark = last_event()

    with pytest.raises(InvalidMaterial) as caught:
        preview_material_withdraw(material_id=material.pk, reason="  ", actor=TEST_ACTOR)

    assert caught.value.errors == {"reason": ["Required."]}
    material.refresh_from_db()
    assert material.withdrawn_at is None
    assert last_event() == mark


@pytest.mark.django_db
def test_a_sample_served_is_the_material_as_uploaded(buyer):
    """The bytes a buyer gets are the bytes hashed at upload."""
    sku = previewable_sku(MaterialKind.SAMPLE)
    token = preview_open(buyer=buyer, sku_slug=sku.slug).token
    item = PreviewFile.objects.get(path="notes.txt")

    page = Client().get(f"/previews/{token}/notes.txt")

    served = b"".join(page.streaming_content)
    assert hashlib.sha256(served).hexdigest() == item.sha256
    assert page["ETag"] == f'"{item.sha256}"'
