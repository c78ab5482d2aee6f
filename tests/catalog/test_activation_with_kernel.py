"""Activation and re-verification of SKUs through the catalog services, with the HTTP Kernel
backend talking mutual TLS to the stand-in Kernel of tests/support/kernel.py."""

from typing import Any

import pytest

from catalog.exceptions import TransitionRefused
from catalog.models import ManifestStatus, Sku, SkuStatus
from catalog.services import (
    ManifestCheck,
    partner_key_register,
    partner_key_revoke,
    sku_activate,
    sku_manifest_verify,
)
from tests.catalog.factories import TEST_ACTOR, Publisher, publish_sku
from tests.support.kernel import VERIFY_PATH, KernelServer, rejected, server_error
from tests.support.keys import new_signing_key, public_key_b64
from tests.support.net import free_port

pytestmark = pytest.mark.django_db

UNREACHABLE = "the manifest could not be verified, the Kernel is unreachable: "
REJECTED = "the manifest signature was rejected: "


@pytest.fixture
def draft(publisher: Publisher, kernel: KernelServer) -> Sku:
    """A SKU ready for sale in every respect but the Kernel's verdict."""
    return publish_sku(publisher, activate=False)


@pytest.fixture
def on_sale(draft: Sku, publisher: Publisher, kernel: KernelServer) -> Sku:
    kernel.register_key("acme", "k1", publisher.key.public_key())
    sku_activate(sku_id=draft.pk, actor=TEST_ACTOR)
    draft.refresh_from_db()
    assert draft.status == SkuStatus.ACTIVE
    kernel.reset()  # the tests look only at what happens after activation
    return draft


def _kernel_down(settings: Any) -> str:
    url = f"https://127.0.0.1:{free_port()}"
    settings.KERNEL_URL = url
    return url


def test_activation_succeeds_when_the_kernel_verifies(
    draft: Sku, publisher: Publisher, kernel: KernelServer
) -> None:
    kernel.register_key("acme", "k1", publisher.key.public_key())

    sku_activate(sku_id=draft.pk, actor=TEST_ACTOR)

    sku = Sku.objects.get(pk=draft.pk)
    assert sku.status == SkuStatus.ACTIVE
    assert sku.manifest_status == ManifestStatus.VERIFIED
    assert sku.manifest_detail == "signature by acme/k1 is valid"
    assert sku.manifest_key_id == "k1"
    assert sku.manifest_checked_at is not None
    [request] = kernel.requests
    assert request.path == VERIFY_PATH
    assert request.body == {
        "publisher": "acme",
        "manifest": draft.manifest,
        "signature": draft.manifest_signature,
        "registered_key_ids": ["k1"],
    }
    assert request.client_subject == "CN=marketplace-test-client,O=Marketplace Tests"


def test_the_kernel_is_told_only_the_keys_that_are_still_registered(
    draft: Sku, publisher: Publisher, kernel: KernelServer
) -> None:
    for key_id in ("k0", "k2"):
        partner_key_register(
            partner=publisher.partner,
            key_id=key_id,
            public_key=public_key_b64(new_signing_key()),
            actor=TEST_ACTOR,
        )
    [k0] = publisher.partner.keys.filter(key_id="k0")
    partner_key_revoke(key_pk=k0.pk, reason="laptop stolen", actor=TEST_ACTOR)
    kernel.register_key("acme", "k1", publisher.key.public_key())

    sku_activate(sku_id=draft.pk, actor=TEST_ACTOR)

    assert [request.body["registered_key_ids"] for request in kernel.requests] == [["k1", "k2"]]
    assert Sku.objects.get(pk=draft.pk).status == SkuStatus.ACTIVE


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        (
            [rejected("key k1 was revoked by acme on 2026-03-01")],
            "key k1 was revoked by acme on 2026-03-01",
        ),
        (
            [rejected("the manifest names an unknown schema", status=422, field="detail")],
            "the manifest names an unknown schema",
        ),
        # Unscripted: the Kernel checks the signature itself and knows no key of acme.
        ([], "no key of acme known to the Kernel matches the signature (tried: none)"),
    ],
)
def test_activation_is_refused_with_the_kernels_reason_when_it_rejects(
    draft: Sku, kernel: KernelServer, script: list[Any], reason: str
) -> None:
    kernel.script(*script)

    with pytest.raises(TransitionRefused) as refused:
        sku_activate(sku_id=draft.pk, actor=TEST_ACTOR)

    detail = f"the Kernel rejected the manifest: {reason}"
    assert refused.value.reasons == [REJECTED + detail]
    sku = Sku.objects.get(pk=draft.pk)
    assert sku.status == SkuStatus.DRAFT
    assert sku.activated_at is None
    assert sku.manifest_status == ManifestStatus.REJECTED
    assert sku.manifest_detail == detail
    assert sku.manifest_key_id == ""


def test_activation_is_refused_as_unreachable_when_the_kernel_fails(
    draft: Sku, kernel: KernelServer
) -> None:
    kernel.script(server_error(500))

    with pytest.raises(TransitionRefused) as refused:
        sku_activate(sku_id=draft.pk, actor=TEST_ACTOR)

    detail = f"the Kernel at {kernel.url} failed with HTTP 500"
    assert refused.value.reasons == [UNREACHABLE + detail]
    sku = Sku.objects.get(pk=draft.pk)
    assert sku.status == SkuStatus.DRAFT
    assert sku.manifest_status == ManifestStatus.UNAVAILABLE
    assert sku.manifest_detail == detail


def test_activation_is_refused_as_unreachable_when_the_kernel_is_down(
    draft: Sku, kernel: KernelServer, settings: Any
) -> None:
    url = _kernel_down(settings)

    with pytest.raises(TransitionRefused) as refused:
        sku_activate(sku_id=draft.pk, actor=TEST_ACTOR)

    [reason] = refused.value.reasons
    assert reason.startswith(f"{UNREACHABLE}the Kernel at {url} is unreachable: ")
    assert "Connection refused" in reason
    sku = Sku.objects.get(pk=draft.pk)
    assert sku.status == SkuStatus.DRAFT
    assert sku.manifest_status == ManifestStatus.UNAVAILABLE
    assert reason == UNREACHABLE + sku.manifest_detail
    assert kernel.requests == []


def test_activation_succeeds_once_the_kernel_is_back(
    draft: Sku, publisher: Publisher, kernel: KernelServer
) -> None:
    kernel.script(server_error(503))
    with pytest.raises(TransitionRefused):
        sku_activate(sku_id=draft.pk, actor=TEST_ACTOR)
    kernel.register_key("acme", "k1", publisher.key.public_key())

    sku_activate(sku_id=draft.pk, actor=TEST_ACTOR)

    sku = Sku.objects.get(pk=draft.pk)
    assert sku.status == SkuStatus.ACTIVE
    assert sku.manifest_status == ManifestStatus.VERIFIED
    assert len(kernel.requests) == 2


@pytest.mark.parametrize("outage", ["answers 503", "is down"])
def test_an_active_sku_keeps_its_verdict_through_a_kernel_outage(
    on_sale: Sku, kernel: KernelServer, settings: Any, outage: str
) -> None:
    if outage == "is down":
        url = _kernel_down(settings)
    else:
        url = kernel.url
        kernel.script(server_error(503))

    check = sku_manifest_verify(sku_id=on_sale.pk, actor=TEST_ACTOR)

    assert check is not None
    assert check.status == ManifestStatus.UNAVAILABLE
    assert check.detail.startswith(f"the Kernel at {url} ")
    sku = Sku.objects.get(pk=on_sale.pk)
    assert sku.status == SkuStatus.ACTIVE
    assert sku.manifest_status == ManifestStatus.VERIFIED
    assert sku.manifest_detail == on_sale.manifest_detail == "signature by acme/k1 is valid"
    assert sku.manifest_key_id == "k1"
    assert sku.manifest_checked_at == on_sale.manifest_checked_at
    assert sku.updated_at == on_sale.updated_at


def test_an_active_sku_is_suspended_when_a_reverification_is_rejected(
    on_sale: Sku, kernel: KernelServer
) -> None:
    kernel.script(rejected("key k1 was revoked by acme on 2026-03-01"))

    check = sku_manifest_verify(sku_id=on_sale.pk, actor=TEST_ACTOR)

    detail = "the Kernel rejected the manifest: key k1 was revoked by acme on 2026-03-01"
    assert check == ManifestCheck(ManifestStatus.REJECTED, detail)
    sku = Sku.objects.get(pk=on_sale.pk)
    assert sku.status == SkuStatus.SUSPENDED
    assert sku.status_reason == f"manifest rejected on re-verification: {detail}"
    assert sku.status_changed_at is not None
    assert sku.status_changed_at > on_sale.status_changed_at
    assert sku.manifest_status == ManifestStatus.REJECTED
    assert sku.manifest_detail == detail
    assert sku.manifest_key_id == ""
    assert len(kernel.requests) == 1
