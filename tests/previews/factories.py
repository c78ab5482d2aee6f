"""Preview material for tests: a sample and a sandbox serving the demo server."""

import io
from typing import Any

from catalog.models import Sku
from previews.models import MaterialKind, PreviewMaterial
from previews.sandbox import DEMO_SERVER
from previews.services import Upload, preview_material_add, sku_preview_set
from tests.catalog.factories import TEST_ACTOR, make_publisher, publish_sku

SERVER_COMMAND = ["/usr/bin/python3", "-I", "-B", "server.py"]
INDEX = b"<!doctype html><h1>Preview</h1><p>Hello from the preview.</p>"


def sample_uploads() -> list[Upload]:
    return [
        Upload("index.html", io.BytesIO(INDEX)),
        Upload("notes.txt", io.BytesIO(b"0123456789" * 100)),
    ]


def sandbox_uploads() -> list[Upload]:
    return [
        Upload("index.html", io.BytesIO(INDEX)),
        Upload("server.py", io.BytesIO(DEMO_SERVER.read_bytes())),
    ]


def add_material(sku: Sku, kind: str = MaterialKind.SANDBOX, **kwargs: Any) -> PreviewMaterial:
    uploads = sample_uploads() if kind == MaterialKind.SAMPLE else sandbox_uploads()
    command = SERVER_COMMAND if kind == MaterialKind.SANDBOX else None
    return preview_material_add(
        sku_id=sku.pk,
        kind=kind,
        uploads=kwargs.pop("uploads", uploads),
        command=kwargs.pop("command", command),
        actor=TEST_ACTOR,
        **kwargs,
    )


def previewable_sku(kind: str = MaterialKind.SANDBOX, **sku_fields: Any) -> Sku:
    """An active SKU with preview material of `kind` and its preview switched on."""
    sku = publish_sku(make_publisher(), **sku_fields)
    add_material(sku, kind)
    sku_preview_set(sku_id=sku.pk, enabled=True, actor=TEST_ACTOR)
    sku.refresh_from_db()
    return sku
