"""Catalog factories. They create through the services, so test data obeys the same rules as
real data (paths of categories, draft status of new SKUs, ...)."""

import io
import os
from dataclasses import dataclass
from typing import Any

import factory
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from factory.django import DjangoModelFactory

from catalog import services
from catalog.manifests import manifest_for
from catalog.models import Category, Partner, PartnerKind, Sku
from marketplace.actors import Actor
from tests.support.keys import new_signing_key, public_key_b64, sign_manifest

# Who the audit log names for what the test data set up.
TEST_ACTOR = Actor.system("tests")


class PartnerFactory(DjangoModelFactory):
    class Meta:
        model = Partner

    slug = factory.Sequence(lambda n: f"partner-{n}")
    name = factory.LazyAttribute(lambda o: o.slug.replace("-", " ").title())
    kind = PartnerKind.PUBLISHER
    contract_reference = factory.Sequence(lambda n: f"CTR-{n:04d}")
    payout_reference = factory.Sequence(lambda n: f"PAY-{n:04d}")

    @classmethod
    def _create(cls, model_class: type[Partner], *args: Any, **kwargs: Any) -> Partner:
        return services.partner_save(partner=model_class(**kwargs), actor=TEST_ACTOR)


class CategoryFactory(DjangoModelFactory):
    class Meta:
        model = Category

    slug = factory.Sequence(lambda n: f"category-{n}")
    name = factory.LazyAttribute(lambda o: o.slug.replace("-", " ").title())
    parent = None

    @classmethod
    def _create(cls, model_class: type[Category], *args: Any, **kwargs: Any) -> Category:
        return services.category_save(category=model_class(**kwargs), actor=TEST_ACTOR)


class SkuFactory(DjangoModelFactory):
    class Meta:
        model = Sku

    slug = factory.Sequence(lambda n: f"sku-{n}")
    title = factory.Sequence(lambda n: f"Package {n}")
    summary = "A package."
    category = factory.SubFactory(CategoryFactory)
    partner = factory.SubFactory(PartnerFactory)
    price_amount = 1999
    currency = "USD"
    version = "1.0.0"

    @classmethod
    def _create(cls, model_class: type[Sku], *args: Any, **kwargs: Any) -> Sku:
        return services.sku_save(sku=model_class(**kwargs), actor=TEST_ACTOR)


@dataclass
class Publisher:
    """A partner with a registered manifest-signing key whose private half the test holds."""

    partner: Partner
    key: Ed25519PrivateKey
    key_id: str = "k1"


def make_publisher(**partner_fields: Any) -> Publisher:
    partner = PartnerFactory(**partner_fields)
    key = new_signing_key()
    services.partner_key_register(
        partner=partner, key_id="k1", public_key=public_key_b64(key), actor=TEST_ACTOR
    )
    return Publisher(partner=partner, key=key)


def publish_sku(
    publisher: Publisher,
    *,
    content: bytes | None = None,
    splits: list[tuple[Partner, int]] | None = None,
    activate: bool = True,
    **sku_fields: Any,
) -> Sku:
    """A SKU with an uploaded artifact, a manifest signed by the publisher, full splits and
    moderation's verdicts (the local rules pass the default content); activated unless told
    otherwise."""
    sku = SkuFactory(partner=publisher.partner, **sku_fields)
    artifact = services.sku_artifact_upload(
        sku=sku,
        # The leading zero byte keeps random bytes from starting with a file type's magic
        # (MZ, a gzip header, ...), which moderation would judge by.
        content=io.BytesIO(content or b"\x00" + os.urandom(4095)),
        filename="package.zip",
        actor=TEST_ACTOR,
    )
    sku.refresh_from_db()
    manifest = manifest_for(sku, artifact)
    services.sku_manifest_attach(
        sku_id=sku.pk,
        manifest=manifest,
        signature=sign_manifest(publisher.key, manifest),
        actor=TEST_ACTOR,
    )
    services.sku_splits_set(
        sku_id=sku.pk, splits=splits or [(publisher.partner, 10_000)], actor=TEST_ACTOR
    )
    services.sku_moderate(sku_id=sku.pk, actor=TEST_ACTOR)
    if activate:
        services.sku_activate(sku_id=sku.pk, actor=TEST_ACTOR)
    sku.refresh_from_db()
    return sku
