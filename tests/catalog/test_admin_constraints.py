"""The catalog admin forms show each rule the model and the services enforce at the field it is
about, in the words of the rule (the constraint's `violation_error_message`, the service's
error), and write nothing when they refuse."""

import json
from typing import Any

import pytest
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError

from audit.models import AuditEvent
from catalog.admin.skus import SkuAdminForm
from catalog.models import (
    Artifact,
    Category,
    ManifestStatus,
    Partner,
    PartnerKey,
    RoyaltySplit,
    Sku,
    SkuStatus,
)
from tests.catalog.factories import CategoryFactory, PartnerFactory, SkuFactory, publish_sku
from tests.catalog.test_admin import ADD_URL, sku_form
from tests.support.keys import new_signing_key, public_key_b64, public_key_pem

pytestmark = pytest.mark.django_db

PRICE = "The price must be more than zero. Enter it in the currency's minor units: 1999 is 19.99 USD, 500 is 500 JPY."  # noqa: E501
SEATS = "A license is for at least 1 seat; enter 1 or more."
PREVIEW_TTL = (
    "A preview lasts 60 to 86,400 seconds (1 minute to 24 hours); enter a number in that range."
)
CURRENCY = "ZZZ is not an ISO 4217 currency code in use (e.g. USD, EUR, JPY)."

# field, value posted, the words shown at the field
SKU_FIELD_RULES = [
    pytest.param("price_amount", "0", PRICE, id="sku_price_positive-zero"),
    pytest.param("price_amount", "-500", PRICE, id="sku_price_positive-negative"),
    pytest.param("license_seats", "0", SEATS, id="sku_seats_positive"),
    pytest.param("preview_ttl_seconds", "59", PREVIEW_TTL, id="sku_preview_ttl_range-short"),
    pytest.param("preview_ttl_seconds", "86401", PREVIEW_TTL, id="sku_preview_ttl_range-long"),
    pytest.param("currency", "zzz", CURRENCY, id="sku_currency_iso4217"),
]


@pytest.fixture
def ops_client(client, content_ops):
    client.force_login(content_ops)
    return client


def last_event() -> int:
    # The last inserted: on PostgreSQL an event has no sequence until it is sealed.
    return AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0


def form_of(response) -> SkuAdminForm:
    assert response.status_code == 200, "the form was not sent back"
    return response.context["adminform"].form


def change_data(client, sku: Sku, **fields: Any) -> dict[str, Any]:
    """What the change page of a draft posts when nothing is touched, with `fields` changed."""
    page = client.get(f"/admin/catalog/sku/{sku.pk}/change/")
    form = page.context["adminform"].form
    data = {
        name: value
        for name, value in form.initial.items()
        if name in form.fields and value is not None and name != "license_entitlements"
    }
    data["license_entitlements"] = json.dumps(sku.license_entitlements)
    splits = list(sku.splits.all())
    data |= {
        "splits-TOTAL_FORMS": str(len(splits)),
        "splits-INITIAL_FORMS": str(len(splits)),
        "splits-MIN_NUM_FORMS": "0",
        "splits-MAX_NUM_FORMS": "1000",
    }
    for index, split in enumerate(splits):
        data |= {
            f"splits-{index}-id": split.pk,
            f"splits-{index}-sku": sku.pk,
            f"splits-{index}-partner": split.partner_id,
            f"splits-{index}-basis_points": str(split.basis_points),
        }
    return data | fields


# --- SKU: add and change forms -------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value", "words"), SKU_FIELD_RULES)
def test_the_add_form_shows_a_broken_rule_at_its_field(ops_client, publisher, field, value, words):
    category = CategoryFactory()
    events = last_event()

    response = ops_client.post(
        ADD_URL,
        sku_form(
            publisher,
            category,
            content=b"x" * 100,
            splits=[(publisher.partner.pk, 10_000)],
            **{field: value},
        ),
    )

    form = form_of(response)
    assert form.errors == {field: [words]}
    assert form.non_field_errors() == []
    assert not Sku.objects.exists()
    assert not Artifact.objects.exists()
    assert last_event() == events


@pytest.mark.parametrize(("field", "value", "words"), SKU_FIELD_RULES)
@pytest.mark.parametrize("status", [SkuStatus.DRAFT, SkuStatus.ACTIVE])
def test_the_change_form_shows_a_broken_rule_at_its_field(
    ops_client, publisher, status, field, value, words
):
    sku = publish_sku(publisher, activate=status == SkuStatus.ACTIVE)
    stored = Sku.objects.values().get(pk=sku.pk)
    events = last_event()

    response = ops_client.post(
        f"/admin/catalog/sku/{sku.pk}/change/", change_data(ops_client, sku, **{field: value})
    )

    form = form_of(response)
    assert form.errors == {field: [words]}
    assert Sku.objects.values().get(pk=sku.pk) == stored
    assert last_event() == events


def test_a_slug_another_sku_has_is_refused_at_the_slug(ops_client, publisher):
    SkuFactory(slug="new-tool", partner=publisher.partner)
    draft = SkuFactory(slug="draft", partner=publisher.partner)
    category = CategoryFactory()
    events = last_event()
    words = "Another SKU already has this slug; choose another (it is the public id)."

    added = ops_client.post(
        ADD_URL,
        sku_form(publisher, category, content=b"x", splits=[(publisher.partner.pk, 10_000)]),
    )
    changed = ops_client.post(
        f"/admin/catalog/sku/{draft.pk}/change/",
        change_data(ops_client, draft, slug="new-tool"),
    )

    assert form_of(added).errors == {"slug": [words]}
    assert form_of(changed).errors == {"slug": [words]}
    assert sorted(Sku.objects.values_list("slug", flat=True)) == ["draft", "new-tool"]
    assert last_event() == events


def test_the_form_shows_what_the_service_refuses_at_its_field(publisher):
    """Outside the admin's read-only fields, the form asks sku_save's checks for what an
    active SKU protects, and shows their words at the field."""
    sku = publish_sku(publisher)
    data = {
        name: getattr(sku, name)
        for name in SkuAdminForm.Meta.fields
        if name != "manifest_signature"
    } | {
        "category": sku.category_id,
        "partner": PartnerFactory().pk,
        "version": "2.0.0",
        "license_entitlements": "[]",
        "license_duration_days": "",
        "license_terms_url": "",
    }
    form = SkuAdminForm(data, instance=Sku.objects.get(pk=sku.pk))
    form.fields.pop("manifest_text")
    form.fields.pop("artifact_file")

    assert not form.is_valid()
    assert form.errors == {
        "partner": [
            f"The partner of {sku.slug} cannot change while it is on sale; suspend it first."
        ],
        "version": [
            f"The version of {sku.slug} cannot change while it is on sale; suspend it first."
        ],
    }
    assert Sku.objects.get(pk=sku.pk).version == "1.0.0"


def test_each_sku_constraint_names_its_field_and_says_what_to_do(publisher):
    """The model's own validation, which the admin forms and sku_save use: every check
    constraint's error is at the field it covers; the one about several fields is above the
    form."""
    sku = publish_sku(publisher, activate=False)
    sku.price_amount = 0
    sku.currency = "usd"
    sku.status = "on-hold"
    sku.manifest_status = "guessed"
    sku.license_seats = 0
    sku.preview_ttl_seconds = 10

    with pytest.raises(ValidationError) as caught:
        sku.validate_constraints()

    assert caught.value.message_dict == {
        "price_amount": [PRICE],
        "currency": ["Enter the currency as its three-letter ISO 4217 code, e.g. USD."],
        "status": ["A SKU is a draft, active, suspended or retired."],
        "manifest_status": ["The manifest status is not one the catalog knows."],
        "license_seats": [SEATS],
        "preview_ttl_seconds": [PREVIEW_TTL],
    }

    on_sale = Sku.objects.get(pk=sku.pk)
    on_sale.status = SkuStatus.ACTIVE
    on_sale.manifest_status = ManifestStatus.MISMATCH
    with pytest.raises(ValidationError) as caught:
        on_sale.validate_constraints()
    assert caught.value.message_dict == {
        NON_FIELD_ERRORS: ["Only a SKU with an artifact and a verified manifest can be on sale."]
    }


# --- Royalty splits ------------------------------------------------------------------------------


def test_a_share_outside_1_to_10000_is_refused_at_its_basis_points(ops_client, publisher):
    sku = publish_sku(publisher, activate=False)
    events = last_event()

    response = ops_client.post(
        f"/admin/catalog/sku/{sku.pk}/change/",
        change_data(ops_client, sku, **{"splits-0-basis_points": "0"}),
    )

    assert response.status_code == 200
    split_form = response.context["inline_admin_formsets"][0].formset.forms[0]
    assert split_form.errors == {
        "basis_points": ["A share is 1 to 10,000 basis points; 10,000 is the whole price."]
    }
    assert list(RoyaltySplit.objects.values_list("basis_points", flat=True)) == [10_000]
    assert last_event() == events


def test_a_partner_listed_twice_in_the_splits_is_refused_in_the_constraints_words(
    ops_client, publisher
):
    category = CategoryFactory()
    events = last_event()

    response = ops_client.post(
        ADD_URL,
        sku_form(
            publisher,
            category,
            content=b"x",
            splits=[(publisher.partner.pk, 5000), (publisher.partner.pk, 5000)],
        ),
    )

    assert response.status_code == 200
    formset = response.context["inline_admin_formsets"][0].formset
    assert formset.non_form_errors() == ["Each partner appears once in a SKU's royalty splits."]
    assert not Sku.objects.exists()
    assert last_event() == events


# --- Partners and their keys ---------------------------------------------------------------------


def key_data(partner: Partner, **new_key: str) -> dict[str, Any]:
    keys = list(partner.keys.all())
    data = {
        "name": partner.name,
        "slug": partner.slug,
        "kind": partner.kind,
        "is_active": "on",
        "keys-TOTAL_FORMS": str(len(keys) + 1),
        "keys-INITIAL_FORMS": str(len(keys)),
        "keys-MIN_NUM_FORMS": "0",
        "keys-MAX_NUM_FORMS": "1000",
    }
    for index, key in enumerate(keys):
        data |= {f"keys-{index}-id": key.pk, f"keys-{index}-partner": partner.pk}
    new = len(keys)
    data[f"keys-{new}-partner"] = partner.pk
    for field, value in new_key.items():
        data[f"keys-{new}-{field}"] = value
    return data


def test_a_pem_key_registers_from_the_partner_page(ops_client, publisher):
    url = f"/admin/catalog/partner/{publisher.partner.pk}/change/"
    key = new_signing_key()

    response = ops_client.post(
        url, key_data(publisher.partner, key_id="k2", public_key=public_key_pem(key))
    )

    assert response.status_code == 302
    assert publisher.partner.keys.get(key_id="k2").public_key == public_key_b64(key)


def test_a_key_id_the_partner_has_is_refused_at_the_key_id(ops_client, publisher):
    url = f"/admin/catalog/partner/{publisher.partner.pk}/change/"
    events = last_event()

    response = ops_client.post(
        url, key_data(publisher.partner, key_id="k1", public_key=public_key_b64(new_signing_key()))
    )

    assert response.status_code == 200
    formset = response.context["inline_admin_formsets"][0].formset
    assert formset.non_form_errors() == [
        "The partner already has a key with this id; give the new key another id."
    ]
    assert PartnerKey.objects.count() == 1
    assert last_event() == events


def test_a_key_registered_to_another_partner_is_refused_at_the_public_key(ops_client, publisher):
    other = PartnerFactory(slug="other")
    url = f"/admin/catalog/partner/{other.pk}/change/"
    events = last_event()

    response = ops_client.post(
        url, key_data(other, key_id="k1", public_key=public_key_pem(publisher.key))
    )

    assert response.status_code == 200
    key_form = response.context["inline_admin_formsets"][0].formset.forms[0]
    assert key_form.errors == {"public_key": ["This key is already registered as acme/k1."]}
    assert PartnerKey.objects.count() == 1
    assert last_event() == events


def test_a_slug_another_partner_or_category_has_is_refused_at_the_slug(ops_client, publisher):
    CategoryFactory(slug="tools")
    events = last_event()

    partner = ops_client.post(
        "/admin/catalog/partner/add/",
        {
            "name": "Acme again",
            "slug": "acme",
            "kind": "publisher",
            "keys-TOTAL_FORMS": "0",
            "keys-INITIAL_FORMS": "0",
        },
    )
    category = ops_client.post(
        "/admin/catalog/category/add/", {"name": "Tools", "slug": "tools", "description": ""}
    )

    assert form_of(partner).errors == {
        "slug": ["Another partner already has this slug; choose another."]
    }
    assert form_of(category).errors == {
        "slug": ["Another category already has this slug; choose another."]
    }
    assert Partner.objects.count() == 1
    assert Category.objects.count() == 1
    assert last_event() == events


def test_a_category_under_itself_is_refused_at_the_parent(ops_client):
    root = CategoryFactory(slug="root", name="Root")
    events = last_event()

    response = ops_client.post(
        f"/admin/catalog/category/{root.pk}/change/",
        {"name": "Root", "slug": "root", "parent": root.pk, "description": ""},
    )

    assert form_of(response).errors == {
        "parent": ["A category cannot be placed under itself or one of its own subcategories."]
    }
    assert Category.objects.get(pk=root.pk).parent is None
    assert last_event() == events
