"""Content ops publish a SKU from the admin, in a real browser: create it with its artifact,
signed manifest and royalty splits, activate it, and find it in the public API."""

import hashlib
import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from django.contrib.admin.models import ADDITION, LogEntry
from playwright.sync_api import Page, expect
from pytest_django.live_server_helper import LiveServer

from catalog import services
from catalog.manifests import MANIFEST_SCHEMA
from catalog.models import ManifestStatus, Sku, SkuStatus
from marketplace.models import User
from tests.catalog.factories import TEST_ACTOR, CategoryFactory, Publisher, publish_sku
from tests.conftest import STAFF_PASSWORD
from tests.support.browser import admin_log_in
from tests.support.keys import sign_manifest

pytestmark = pytest.mark.browser

SLUG = "acme-model-pack"


def _api_get(live_server: LiveServer, path: str) -> tuple[int, dict[str, Any]]:
    try:
        # S310: the URL is the live server's own http:// address.
        with urllib.request.urlopen(f"{live_server.url}{path}", timeout=10) as response:  # noqa: S310
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def _choose_autocomplete(page: Page, field_id: str, *, search: str, option: str) -> None:
    """Picks an option of an admin autocomplete (select2) field the way a person does."""
    page.click(f"[aria-labelledby='select2-{field_id}-container']")
    page.fill(".select2-container--open .select2-search__field", search)
    page.locator(".select2-results__option", has_text=option).click()
    expect(page.locator(f"#{field_id}")).not_to_have_value("")


def _run_action(page: Page, *, slug: str, action: str) -> None:
    page.goto("/admin/catalog/sku/")
    page.locator("#result_list tbody tr", has_text=slug).locator("input.action-select").check()
    page.select_option("select[name=action]", action)
    page.click("button[name=index]")  # "Go"
    # The changelist comes back with the action's messages; wait for them, not the old page.
    expect(page.locator("ul.messagelist")).to_be_visible()


def _messages(page: Page, level: str) -> list[str]:
    return page.locator(f"ul.messagelist li.{level}").all_text_contents()


def test_content_ops_publish_a_sku_and_it_is_on_sale(
    page: Page,
    live_server: LiveServer,
    content_ops: User,
    publisher: Publisher,
    tmp_path: Path,
) -> None:
    category = CategoryFactory(slug="models", name="Models")
    content = os.urandom(64 * 1024)
    package = tmp_path / "model-pack.zip"
    package.write_bytes(content)
    sha256 = hashlib.sha256(content).hexdigest()
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "publisher": publisher.partner.slug,
        "sku": SLUG,
        "version": "2.1.0",
        "artifact": {"filename": package.name, "size": len(content), "sha256": sha256},
    }

    admin_log_in(page, email=content_ops.email, password=STAFF_PASSWORD)
    page.goto("/admin/catalog/sku/add/")
    # Typed key by key: the admin fills the slug in from the title on keyup.
    page.locator("#id_title").press_sequentially("Acme Model Pack")
    expect(page.locator("#id_slug")).to_have_value(SLUG)  # prepopulated from the title
    _choose_autocomplete(page, "id_partner", search="acme", option="Acme Tools")
    page.select_option("#id_category", label=str(category))  # the admin shows the path
    page.fill("#id_version", "2.1.0")
    page.fill("#id_summary", "Pretrained models, ready to deploy.")
    page.fill("#id_description", "Twelve models with their weights and model cards.")
    page.fill("#id_price_amount", "4900")
    page.fill("#id_currency", "EUR")
    page.set_input_files("#id_artifact_file", package)
    page.fill("#id_manifest_text", json.dumps(manifest, indent=2))
    page.fill("#id_manifest_signature", sign_manifest(publisher.key, manifest))
    page.fill("#id_license_seats", "5")
    _choose_autocomplete(page, "id_splits-0-partner", search="acme", option="Acme Tools")
    page.fill("#id_splits-0-basis_points", "10000")
    page.click("input[name=_continue]")  # "Save and continue editing": stay on the SKU
    # Either the saved SKU with a message, or the form sent back with its errors.
    expect(page.locator("ul.messagelist, p.errornote").first).to_be_visible()

    assert page.locator("p.errornote, ul.errorlist").all_text_contents() == []
    assert _messages(page, "success") == [
        "The SKU “Acme Model Pack (acme-model-pack)” was added successfully. "
        "You may edit it again below."
    ]
    expect(page).to_have_url(re.compile(r"/admin/catalog/sku/\d+/change/$"))
    expect(page.locator(".field-artifact_details")).to_contain_text(f"SHA-256 {sha256}")
    # A draft is not on sale: the public API does not show it yet.
    assert _api_get(live_server, f"/api/v1/skus/{SLUG}")[0] == 404

    _run_action(page, slug=SLUG, action="activate")

    assert _messages(page, "error") == []
    assert _messages(page, "success") == ["1 SKU(s) activated."]

    status, body = _api_get(live_server, f"/api/v1/skus/{SLUG}")
    assert status == 200
    assert body["slug"] == SLUG
    assert body["title"] == "Acme Model Pack"
    assert body["version"] == "2.1.0"
    assert body["price"]["amount"] == 4900
    assert body["price"]["currency"] == "EUR"
    assert body["partner"]["slug"] == publisher.partner.slug
    assert body["category"]["slug"] == category.slug
    assert body["license"]["seats"] == 5
    assert body["artifact"] == {"filename": package.name, "size": len(content), "sha256": sha256}

    sku = Sku.objects.select_related("artifact").get(slug=SLUG)
    assert sku.status == SkuStatus.ACTIVE
    assert sku.manifest_status == ManifestStatus.VERIFIED
    assert sku.manifest == manifest
    assert sku.artifact is not None
    assert sku.artifact.sha256 == sha256
    assert sku.artifact.size == len(content)
    assert sku.artifact.uploaded_by == content_ops
    assert list(sku.splits.values_list("partner", "basis_points")) == [
        (publisher.partner.pk, 10_000)
    ]
    added = LogEntry.objects.get(object_id=str(sku.pk), action_flag=ADDITION)
    assert added.user == content_ops
    assert added.get_change_message() == "Added. Added royalty split “acme: 100.00%”."


def test_activating_a_sku_without_splits_is_refused_with_the_reason(
    page: Page, live_server: LiveServer, content_ops: User, publisher: Publisher
) -> None:
    sku = publish_sku(publisher, activate=False, slug="no-splits")
    services.sku_splits_set(sku_id=sku.pk, splits=[], actor=TEST_ACTOR)

    admin_log_in(page, email=content_ops.email, password=STAFF_PASSWORD)
    _run_action(page, slug=sku.slug, action="activate")

    assert _messages(page, "success") == []
    assert _messages(page, "error") == ["Not activated: no-splits: no royalty splits are set."]
    sku.refresh_from_db()
    assert sku.status == SkuStatus.DRAFT
    assert _api_get(live_server, f"/api/v1/skus/{sku.slug}")[0] == 404


def test_a_form_sent_back_with_errors_keeps_the_artifact_and_says_what_to_fix(
    page: Page,
    live_server: LiveServer,
    content_ops: User,
    publisher: Publisher,
    tmp_path: Path,
) -> None:
    category = CategoryFactory(slug="models", name="Models")
    content = os.urandom(32 * 1024)
    package = tmp_path / "model-pack.zip"
    package.write_bytes(content)
    sha256 = hashlib.sha256(content).hexdigest()

    admin_log_in(page, email=content_ops.email, password=STAFF_PASSWORD)
    page.goto("/admin/catalog/sku/add/")
    page.locator("#id_title").press_sequentially("Acme Model Pack")
    _choose_autocomplete(page, "id_partner", search="acme", option="Acme Tools")
    page.select_option("#id_category", label=str(category))
    page.fill("#id_version", "2.1.0")
    page.fill("#id_price_amount", "0")
    page.fill("#id_currency", "EUR")
    page.fill("#id_preview_ttl_seconds", "30")
    page.set_input_files("#id_artifact_file", package)
    _choose_autocomplete(page, "id_splits-0-partner", search="acme", option="Acme Tools")
    page.fill("#id_splits-0-basis_points", "10000")
    page.click("input[name=_continue]")

    expect(page.locator("p.errornote")).to_be_visible()
    expect(page.locator(".field-price_amount ul.errorlist")).to_have_text(
        "The price must be more than zero. Enter it in the currency's minor units: "
        "1999 is 19.99 USD, 500 is 500 JPY."
    )
    expect(page.locator(".field-preview_ttl_seconds ul.errorlist")).to_have_text(
        "A preview lasts 60 to 86,400 seconds (1 minute to 24 hours); enter a number in that range."
    )
    expect(page.locator(".errorlist.nonfield")).to_have_count(0)
    expect(page.locator(".field-artifact_file .artifact-kept")).to_have_text(
        f"model-pack.zip (32.0\xa0KB, sha256 {sha256[:12]}…) is kept — upload another to "
        "replace it."
    )
    assert not Sku.objects.exists()

    page.fill("#id_price_amount", "4900")
    page.fill("#id_preview_ttl_seconds", "900")
    page.click("input[name=_continue]")  # the file is not chosen again

    expect(page.locator("ul.messagelist, p.errornote").first).to_be_visible()
    assert page.locator("p.errornote, ul.errorlist").all_text_contents() == []
    expect(page.locator(".field-artifact_details")).to_contain_text(f"SHA-256 {sha256}")
    sku = Sku.objects.select_related("artifact").get(slug=SLUG)
    assert (sku.price_amount, sku.artifact.sha256, sku.artifact.uploaded_by) == (
        4900,
        sha256,
        content_ops,
    )
