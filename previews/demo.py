"""Demo preview material: samples for a few demo SKUs and one sandbox serving a tiny site.

Called by `load_demo_data` after the catalog's demo; safe to run again (a SKU that already has
preview material is left as it is).
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass

from catalog.models import Sku
from marketplace.actors import Actor
from previews.models import MaterialKind, PreviewMaterial
from previews.sandbox import DEMO_SERVER
from previews.services import Upload, preview_material_add, sku_preview_set

SAMPLES = 4
SANDBOX_COMMAND = ["/usr/bin/python3", "-I", "-B", "server.py"]


@dataclass(frozen=True)
class PreviewDemo:
    samples: list[str]
    sandboxes: list[str]


def _page(sku: Sku, kind: str) -> bytes:
    title = html.escape(sku.title)
    what = (
        "served by a sandbox: a process of its own, with no network, a read-only root and a "
        "few minutes to live"
        if kind == MaterialKind.SANDBOX
        else "a sample of its files"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>Preview of {title}</title><link rel='stylesheet' href='style.css'></head>"
        f"<body><h1>{title}</h1><p>This preview is {what}.</p>"
        f"<p>Version {html.escape(sku.version)} by {html.escape(sku.partner.name)}.</p>"
        "<p><a href='README.txt'>README.txt</a></p></body></html>"
    ).encode()


def _uploads(sku: Sku, kind: str) -> list[Upload]:
    files = [
        Upload("index.html", io.BytesIO(_page(sku, kind))),
        Upload("style.css", io.BytesIO(b"body{font-family:sans-serif;max-width:40em;margin:2em}")),
        Upload("README.txt", io.BytesIO(f"{sku.title} {sku.version}\n".encode())),
    ]
    if kind == MaterialKind.SANDBOX:
        files.append(Upload("server.py", io.BytesIO(DEMO_SERVER.read_bytes())))
    return files


def load_previews_demo(*, actor: Actor) -> PreviewDemo:
    """Gives the first active demo SKU (by slug) a sandbox and SAMPLES others a sample, one
    partner's after another's, and switches their previews on."""
    active = list(Sku.objects.active().select_related("partner").order_by("slug"))
    chosen: list[Sku] = []
    while active and len(chosen) < SAMPLES + 1:
        partners = {sku.partner_id for sku in chosen[-3:]}
        pick = next((sku for sku in active if sku.partner_id not in partners), active[0])
        chosen.append(pick)
        active.remove(pick)
    done = PreviewDemo(samples=[], sandboxes=[])
    for index, sku in enumerate(chosen):
        kind = MaterialKind.SANDBOX if index == 0 else MaterialKind.SAMPLE
        if not PreviewMaterial.objects.filter(sku=sku).exists():
            preview_material_add(
                sku_id=sku.pk,
                kind=kind,
                uploads=_uploads(sku, kind),
                command=SANDBOX_COMMAND if kind == MaterialKind.SANDBOX else None,
                note="demo",
                actor=actor,
            )
        sku_preview_set(sku_id=sku.pk, enabled=True, actor=actor)
        (done.sandboxes if kind == MaterialKind.SANDBOX else done.samples).append(sku.slug)
    return done
