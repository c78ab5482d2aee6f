"""What the catalog's write services send to the database, statement by statement, so that a
change that adds a round trip shows here; and model validation deciding check constraints in
Python (marketplace/validation.py) exactly as Django's query would.

Shapes are those of a test (each service's own transaction is a savepoint inside the test's);
audit events are counted apart (tests/orders/statements.py).
"""

import io
import os
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import connection, models
from django.test.utils import CaptureQueriesContext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catalog import services
from catalog.exceptions import InvalidSku
from catalog.manifests import manifest_for
from catalog.models import (
    Artifact,
    Category,
    ManifestStatus,
    Partner,
    PartnerKey,
    PartnerKind,
    RoyaltySplit,
    Sku,
    SkuStatus,
)
from marketplace.validation import check_holds, full_clean
from orders.models import Order, Refund, RoyaltyLine
from tests.catalog.factories import TEST_ACTOR, CategoryFactory, PartnerFactory, SkuFactory
from tests.orders.statements import locked, statements
from tests.support.keys import new_signing_key, public_key_b64, sign_manifest

pytestmark = pytest.mark.django_db


# --- Each service's statements -----------------------------------------------------------------


def test_partner_save_is_its_write_and_the_slug_check():
    with statements() as created:
        partner = services.partner_save(
            partner=Partner(slug="acme", name="Acme", kind=PartnerKind.PUBLISHER), actor=TEST_ACTOR
        )
    # No query for the kind's check constraint (Django's full_clean sends one, in a savepoint of
    # its own: three round trips).
    assert created.shape == [
        "SAVEPOINT",
        "SELECT catalog_partner",  # the slug is unique: the error is shown at its field
        "INSERT catalog_partner",
        "RELEASE SAVEPOINT",
    ]
    assert created.audit_events == 1

    partner.name = "Acme Tools"
    with statements() as changed:
        services.partner_save(partner=partner, actor=TEST_ACTOR)
    assert changed.shape == [
        "SAVEPOINT",
        locked("catalog_partner"),  # what it was, for the event's before and after
        "SELECT catalog_partner",
        "UPDATE catalog_partner",
        "RELEASE SAVEPOINT",
    ]
    assert changed.audit_events == 1


def test_category_save_checks_its_two_unique_fields():
    with statements() as created:
        services.category_save(category=Category(slug="tools", name="Tools"), actor=TEST_ACTOR)
    assert created.shape == [
        "SAVEPOINT",
        "SELECT catalog_category",  # slug
        "SELECT catalog_category",  # path
        "INSERT catalog_category",
        "RELEASE SAVEPOINT",
    ]
    assert created.audit_events == 1


def test_partner_key_register():
    partner = PartnerFactory()
    with statements() as registered:
        services.partner_key_register(
            partner=partner, key_id="k1", public_key=public_key_b64(new_signing_key()),
            actor=TEST_ACTOR,
        )  # fmt: skip
    assert registered.shape == [
        "SAVEPOINT",
        "SELECT catalog_partner",  # the partner exists (the key's foreign key)
        "SELECT catalog_partnerkey",  # the fingerprint is unique
        "SELECT catalog_partnerkey",  # the key id is unique per partner
        "SAVEPOINT",  # a concurrent registration of the same key is told apart
        "INSERT catalog_partnerkey",
        "RELEASE SAVEPOINT",
        "RELEASE SAVEPOINT",
    ]
    assert registered.audit_events == 1


def test_sku_save_creates_and_changes_without_a_query_per_check_constraint():
    category, partner = CategoryFactory(), PartnerFactory()
    draft = Sku(
        slug="mesh-tools", title="Mesh Tools", category=category, partner=partner,
        price_amount=1999, currency="EUR", version="1.0.0",
    )  # fmt: skip
    with statements() as created:
        sku = services.sku_save(sku=draft, actor=TEST_ACTOR)
    # Seven check constraints, none of them a query.
    assert created.shape == [
        "SAVEPOINT",
        "SELECT catalog_category",  # the foreign keys exist
        "SELECT catalog_partner",
        "SELECT catalog_sku",  # the slug is unique
        "SAVEPOINT",  # a slug taken meanwhile is refused at its field
        "INSERT catalog_sku",
        "RELEASE SAVEPOINT",
        "RELEASE SAVEPOINT",
    ]
    assert created.audit_events == 1

    sku.price_amount = 2499
    with statements() as changed:
        services.sku_save(sku=sku, actor=TEST_ACTOR)
    assert changed.shape == [
        "SAVEPOINT",
        locked("catalog_sku"),  # with its partner, category and artifact
        "SELECT catalog_category",
        "SELECT catalog_partner",
        "SELECT catalog_sku",
        "SAVEPOINT",
        "UPDATE catalog_sku",
        "RELEASE SAVEPOINT",
        "RELEASE SAVEPOINT",
    ]
    assert changed.audit_events == 1


def test_price_and_splits_set():
    sku = SkuFactory()
    first, second = PartnerFactory(), PartnerFactory()
    with statements() as splits:
        services.sku_splits_set(sku_id=sku.pk, splits=[(first, 7000), (second, 3000)],
                                actor=TEST_ACTOR)  # fmt: skip
    assert splits.shape == [
        "SAVEPOINT",
        locked("catalog_sku"),
        "SELECT catalog_royaltysplit",  # the splits before, for the event
        "DELETE catalog_royaltysplit",
        "INSERT catalog_royaltysplit",  # all of them in one statement
        "RELEASE SAVEPOINT",
    ]
    assert splits.audit_events == 1

    with statements() as unchanged:
        services.sku_splits_set(sku_id=sku.pk, splits=[(first, 7000), (second, 3000)],
                                actor=TEST_ACTOR)  # fmt: skip
    assert unchanged.shape == [
        "SAVEPOINT",
        locked("catalog_sku"),
        "SELECT catalog_royaltysplit",
        "RELEASE SAVEPOINT",
    ]
    assert unchanged.audit_events == 0


def test_sku_activate_and_suspend():
    partner = PartnerFactory()
    key = new_signing_key()
    services.partner_key_register(
        partner=partner, key_id="k1", public_key=public_key_b64(key), actor=TEST_ACTOR
    )
    sku = SkuFactory(partner=partner)
    artifact = services.sku_artifact_upload(
        sku=sku, content=io.BytesIO(os.urandom(2048)), filename="p.zip", actor=TEST_ACTOR
    )
    sku.refresh_from_db()
    manifest = manifest_for(sku, artifact)
    with statements() as attached:
        services.sku_manifest_attach(
            sku_id=sku.pk, manifest=manifest, signature=sign_manifest(key, manifest),
            actor=TEST_ACTOR,
        )  # fmt: skip
    assert attached.shape == [
        "SAVEPOINT",
        locked("catalog_sku"),
        "UPDATE catalog_sku",
        "RELEASE SAVEPOINT",
    ]
    services.sku_splits_set(sku_id=sku.pk, splits=[(partner, 10_000)], actor=TEST_ACTOR)
    services.sku_moderate(sku_id=sku.pk, actor=TEST_ACTOR)

    with statements() as activated:
        services.sku_activate(sku_id=sku.pk, actor=TEST_ACTOR)
    assert activated.shape == [
        "SELECT catalog_sku",  # may it become active at all
        # The manifest checked afresh (the local verifier), its verdict recorded on its own:
        "SELECT catalog_sku",
        "SELECT catalog_partnerkey",
        "SAVEPOINT",
        locked("catalog_sku"),
        "UPDATE catalog_sku",
        "RELEASE SAVEPOINT",
        # whether an otherwise ready SKU has anything moderation has not judged yet:
        "SELECT catalog_sku",
        "SELECT catalog_royaltysplit",
        "SELECT catalog_moderationreview",
        # then the activation, under the lock again:
        "SAVEPOINT",
        locked("catalog_sku"),
        "SELECT catalog_royaltysplit",  # the splits are complete
        "SELECT catalog_moderationreview",  # every current item has passed moderation
        "UPDATE catalog_sku",
        "RELEASE SAVEPOINT",
    ]
    assert activated.audit_events == 2  # sku.manifest_verified, sku.activated

    with statements() as suspended:
        services.sku_suspend(sku_id=sku.pk, reason="recall", actor=TEST_ACTOR)
    assert suspended.shape == [
        "SAVEPOINT",
        locked("catalog_sku"),
        "UPDATE catalog_sku",
        "RELEASE SAVEPOINT",
    ]
    assert suspended.audit_events == 1


# --- Model validation in Python ----------------------------------------------------------------


def test_full_clean_sends_no_check_constraint_query():
    sku = Sku(
        slug="no-query", title="No Query", category=CategoryFactory(), partner=PartnerFactory(),
        price_amount=1, currency="USD", version="1",
    )  # fmt: skip
    with CaptureQueriesContext(connection) as captured:
        full_clean(sku)
    assert not [q["sql"] for q in captured if '"_check"' in q["sql"]]


def test_a_broken_check_is_refused_at_its_field_in_the_constraints_words():
    sku = Sku(
        slug="free", title="Free", category=CategoryFactory(), partner=PartnerFactory(),
        price_amount=0, currency="USD", version="1", license_seats=0, preview_ttl_seconds=5,
    )  # fmt: skip
    with pytest.raises(InvalidSku) as refused:
        services.sku_save(sku=sku, actor=TEST_ACTOR)
    errors = refused.value.errors
    assert set(errors) == {"price_amount", "license_seats", "preview_ttl_seconds"}
    assert errors["price_amount"][0].startswith("The price must be more than zero.")
    assert errors["license_seats"] == ["A license is for at least 1 seat; enter 1 or more."]
    assert Sku.objects.filter(slug="free").count() == 0


# Every check constraint of these models must be decided in Python; for each, random rows are
# judged by check_holds and by Django's own query, which must agree.
DECIDED_IN_PYTHON = [Partner, PartnerKey, Category, Sku, Artifact, RoyaltySplit, Order, Refund,
                     RoyaltyLine]  # fmt: skip
CHECKS = [
    (model, constraint)
    for model in DECIDED_IN_PYTHON
    for constraint in model._meta.constraints
    if isinstance(constraint, models.CheckConstraint)
]

_TEXT = st.sampled_from(
    ["", "x", "USD", "usd", "US", "EURO", "0" * 64, "a1" * 32, "G" * 64, "active",
     "draft", "retired", "verified", "missing", "publisher", "creator", "revoked", "paid", "Paid"]
)  # fmt: skip


def _values(field: models.Field) -> st.SearchStrategy[Any]:
    if field.choices:
        strategy = st.sampled_from([value for value, _ in field.flatchoices] + ["unknown"])
    elif isinstance(field, models.ForeignKey | models.AutoField | models.BigAutoField):
        strategy = st.integers(1, 3)
    elif isinstance(field, models.IntegerField):
        strategy = st.integers(-2, 90_000)
    elif isinstance(field, models.CharField | models.TextField):
        strategy = _TEXT
    else:
        return st.just(getattr(field.model(), field.attname))
    return (
        st.none() | strategy if field.null or not isinstance(field, models.CharField) else strategy
    )


def _rows(model: type[models.Model]) -> st.SearchStrategy[models.Model]:
    fields = [f for f in model._meta.local_concrete_fields if not f.generated]
    return st.fixed_dictionaries({f.attname: _values(f) for f in fields}).map(
        lambda values: model(**values)
    )


@pytest.mark.parametrize(("model", "constraint"), CHECKS, ids=[c.name for _, c in CHECKS])
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_python_decides_each_check_constraint_as_the_database_does(model, constraint, data):
    row = data.draw(_rows(model))
    decided = check_holds(constraint, row, set())
    assert decided is not None, f"{constraint.name} is left to a query"
    try:
        constraint.validate(model, row)  # Django's query
        database = True
    except ValidationError:
        database = False
    assert decided == database, (constraint.name, {f: getattr(row, f) for f in row.__dict__})


def test_a_check_on_an_excluded_field_is_skipped_as_django_skips_it():
    sku = Sku(price_amount=0, status=SkuStatus.DRAFT, manifest_status=ManifestStatus.MISSING)
    price = next(c for c in Sku._meta.constraints if c.name == "sku_price_positive")
    assert check_holds(price, sku, set()) is False
    assert check_holds(price, sku, {"price_amount"}) is True


def test_what_python_cannot_decide_is_left_to_the_database():
    # `$` matches before a final newline in Python's re (and so on SQLite), not in PostgreSQL.
    currency = next(c for c in Sku._meta.constraints if c.name == "sku_currency_iso4217")
    assert check_holds(currency, Sku(currency="USD\n"), set()) is None
    lowered = models.CheckConstraint(
        condition=models.Q(currency__iexact="usd"), name="iexact_is_a_query"
    )
    ordered = models.CheckConstraint(condition=models.Q(title__gt="m"), name="collation")
    sku = Sku(currency="USD", title="z")
    assert check_holds(lowered, sku, set()) is None
    assert check_holds(ordered, sku, set()) is None
