"""Demo catalog: partners with signing keys, a category tree and SKUs with real artifacts,
signed manifests and royalty splits, built through the same services content ops use.

Everything is derived from fixed seeds, so loading twice changes nothing and the partners'
demo signing keys are the same on every machine (they are demo keys: never trust them).
"""

import base64
import hashlib
import io
import random
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from catalog import services
from catalog.manifests import manifest_for, manifest_signing_input
from catalog.models import Category, Partner, PartnerKind, Sku, SkuStatus
from marketplace.actors import Actor

PARTNERS = [
    ("northwind", "Northwind Software", PartnerKind.PUBLISHER, "CTR-2026-0141", "PAY-NW-001"),
    ("polygon-forge", "Polygon Forge", PartnerKind.CREATOR, "CTR-2026-0187", "PAY-PF-002"),
    ("tensor-atelier", "Tensor Atelier", PartnerKind.CREATOR, "CTR-2026-0203", "PAY-TA-003"),
    ("lumen-audio", "Lumen Audio", PartnerKind.CREATOR, "CTR-2026-0219", "PAY-LA-004"),
]

# slug, name, parent slug
CATEGORIES = [
    ("software", "Software", None),
    ("developer-tools", "Developer tools", "software"),
    ("security-tools", "Security tools", "software"),
    ("models", "Models", None),
    ("language-models", "Language models", "models"),
    ("vision-models", "Vision models", "models"),
    ("assets", "Asset packs", None),
    ("3d-assets", "3D assets", "assets"),
    ("audio-assets", "Audio", "assets"),
    ("textures", "Textures", "assets"),
]

# partner, category, currency, title stems
LINES = [
    (
        "northwind",
        "developer-tools",
        "USD",
        ["Build Cache", "Log Lens", "Schema Diff", "Trace Kit", "Query Pilot", "Lint Forge"],
    ),
    (
        "northwind",
        "security-tools",
        "EUR",
        ["Secret Scanner", "Cert Watch", "Audit Trail Pro", "Key Vault Lite"],
    ),
    (
        "tensor-atelier",
        "language-models",
        "USD",
        [
            "Tiny Summarizer",
            "Code Completer",
            "Intent Classifier",
            "Tone Detector",
            "Entity Tagger",
            "Query Rewriter",
        ],
    ),
    (
        "tensor-atelier",
        "vision-models",
        "EUR",
        ["Defect Spotter", "Plate Reader", "Shelf Counter", "Leaf Health"],
    ),
    (
        "polygon-forge",
        "3d-assets",
        "USD",
        [
            "Low-poly Village",
            "Sci-fi Corridor",
            "Medieval Props",
            "Desert Rocks",
            "Modular Dungeon",
            "Harbour Boats",
        ],
    ),
    (
        "polygon-forge",
        "textures",
        "GBP",
        [
            "Worn Metal",
            "Rough Concrete",
            "Painted Wood",
            "Mossy Stone",
            "Brushed Steel",
            "Cracked Asphalt",
        ],
    ),
    (
        "lumen-audio",
        "audio-assets",
        "USD",
        [
            "Ambient Forest",
            "Retro UI Clicks",
            "Orchestral Hits",
            "City Night",
            "Footsteps Library",
            "Synth Risers",
        ],
    ),
    (
        "lumen-audio",
        "audio-assets",
        "JPY",
        ["Taiko Loops", "Temple Bells", "Rain on Roof", "Night Market"],
    ),
]

# What the demo leaves off sale, to show each status and a refusal: slug -> status.
OFF_SALE = {
    "northwind-key-vault-lite": SkuStatus.DRAFT,
    "tensor-atelier-leaf-health": SkuStatus.DRAFT,
    "polygon-forge-harbour-boats": SkuStatus.DRAFT,
    "lumen-audio-synth-risers": SkuStatus.SUSPENDED,
    "polygon-forge-brushed-steel": SkuStatus.SUSPENDED,
    "lumen-audio-rain-on-roof": SkuStatus.RETIRED,
}
# A draft whose manifest names another file: its signature is good, so its manifest status is
# a mismatch (not verified), and activation shows its refusal.
MISMATCHED_MANIFEST = "polygon-forge-harbour-boats"


@dataclass
class DemoResult:
    partners: int = 0
    categories: int = 0
    skus_created: int = 0
    skus_active: int = 0
    keys_dir: Path | None = None


def partner_demo_key(slug: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(
        hashlib.sha256(f"demo-key:{slug}".encode()).digest()
    )


def _artifact_bytes(slug: str, title: str, version: str) -> bytes:
    """A small real zip package: a README, a license and a seeded payload."""
    rng = random.Random(slug)  # noqa: S311 - demo content, not a secret
    payload = rng.randbytes(rng.randint(24, 160) * 1024)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in (
            ("README.md", f"# {title}\n\nVersion {version}. Demo package for {slug}.\n".encode()),
            ("LICENSE.txt", b"Licensed to the buyer under the marketplace's standard terms.\n"),
            ("payload.bin", payload),
        ):
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            archive.writestr(info, data)
    return buffer.getvalue()


def _price(rng: random.Random, currency: str) -> int:
    if currency == "JPY":
        return rng.choice([500, 980, 1500, 2400, 4800])
    return rng.choice([499, 999, 1499, 1999, 2999, 4900, 7900, 12900])


def load_catalog_demo(
    *, keys_dir: Path, actor: Actor, log: Callable[[str], None] = print
) -> DemoResult:
    """Loads what is missing of the demo catalog; every change is the `actor`'s in the audit
    log, as it goes through the services."""
    result = DemoResult(keys_dir=keys_dir)
    keys_dir.mkdir(parents=True, exist_ok=True)

    partners: dict[str, Partner] = {}
    for slug, name, kind, contract, payout in PARTNERS:
        partner = Partner.objects.filter(slug=slug).first()
        if partner is None:
            partner = services.partner_save(
                partner=Partner(
                    slug=slug,
                    name=name,
                    kind=kind,
                    legal_name=f"{name} Ltd",
                    contact_email=f"catalog@{slug}.example",
                    website=f"https://{slug}.example",
                    description=f"{name} sells through the marketplace.",
                    contract_reference=contract,
                    payout_reference=payout,
                ),
                actor=actor,
            )
        private_key = partner_demo_key(slug)
        public_raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        if not partner.keys.filter(key_id="demo-2026").exists():
            services.partner_key_register(
                partner=partner,
                key_id="demo-2026",
                public_key=base64.b64encode(public_raw).decode(),
                actor=actor,
            )
        (keys_dir / f"{slug}.pem").write_bytes(
            private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        partners[slug] = partner
    result.partners = len(partners)

    categories: dict[str, Category] = {}
    for slug, name, parent_slug in CATEGORIES:
        category = Category.objects.filter(slug=slug).first()
        if category is None:
            category = services.category_save(
                category=Category(
                    slug=slug,
                    name=name,
                    parent=categories[parent_slug] if parent_slug else None,
                    description=f"{name} from the marketplace's partners.",
                ),
                actor=actor,
            )
        categories[slug] = category
    result.categories = len(categories)

    for partner_slug, category_slug, currency, titles in LINES:
        for title in titles:
            slug = f"{partner_slug}-{title.lower().replace(' ', '-')}"
            if Sku.objects.filter(slug=slug).exists():
                continue
            _create_demo_sku(
                slug=slug,
                title=title,
                partner=partners[partner_slug],
                category=categories[category_slug],
                currency=currency,
                partners=partners,
                actor=actor,
            )
            result.skus_created += 1
            log(f"  {slug}")

    result.skus_active = Sku.objects.active().count()
    return result


def _create_demo_sku(
    *,
    slug: str,
    title: str,
    partner: Partner,
    category: Category,
    currency: str,
    partners: dict[str, Partner],
    actor: Actor,
) -> None:
    rng = random.Random(f"sku:{slug}")  # noqa: S311 - demo content, not a secret
    version = f"{rng.randint(1, 4)}.{rng.randint(0, 9)}.{rng.randint(0, 20)}"
    sku = services.sku_save(
        sku=Sku(
            slug=slug,
            title=title,
            summary=f"{title} by {partner.name}.",
            description=f"{title}, version {version}. Delivered encrypted; licensed per seat.",
            category=category,
            partner=partner,
            price_amount=_price(rng, currency),
            currency=currency,
            version=version,
            license_duration_days=rng.choice([None, 365]),
            license_seats=rng.choice([1, 1, 5]),
            license_entitlements=["standard"] + (["commercial"] if rng.random() < 0.5 else []),
        ),
        actor=actor,
    )
    content = _artifact_bytes(slug, title, version)
    artifact = services.sku_artifact_upload(
        sku=sku,
        content=io.BytesIO(content),
        filename=f"{slug}-{version}.zip",
        content_type="application/zip",
        actor=actor,
    )
    sku.refresh_from_db()
    manifest = manifest_for(sku, artifact)
    if slug == MISMATCHED_MANIFEST:
        manifest["artifact"]["sha256"] = hashlib.sha256(b"an earlier build").hexdigest()
    signature = base64.b64encode(
        partner_demo_key(partner.slug).sign(manifest_signing_input(manifest))
    ).decode()
    services.sku_manifest_attach(sku_id=sku.pk, manifest=manifest, signature=signature, actor=actor)

    # Some goods are co-created: the second partner takes a share.
    if rng.random() < 0.25:
        other = rng.choice([p for p in partners.values() if p.pk != partner.pk])
        splits = [(partner, 7000), (other, 3000)]
    else:
        splits = [(partner, 10_000)]
    services.sku_splits_set(sku_id=sku.pk, splits=splits, actor=actor)

    target = OFF_SALE.get(slug, SkuStatus.ACTIVE)
    if target == SkuStatus.DRAFT:
        services.sku_manifest_verify(sku_id=sku.pk, actor=actor)
        return
    services.sku_activate(sku_id=sku.pk, actor=actor)
    if target == SkuStatus.SUSPENDED:
        services.sku_suspend(
            sku_id=sku.pk, reason="Demo: held back pending a partner fix.", actor=actor
        )
    elif target == SkuStatus.RETIRED:
        services.sku_retire(sku_id=sku.pk, reason="Demo: replaced by a newer pack.", actor=actor)
