"""Partner staff in the admin: bound to one partner by their identity, they see and edit only
that partner's draft SKUs, keys, sales and royalty lines, and nothing of another partner in
lists, search, filters, autocomplete, actions or by URL. Content ops and Finance still see
everything."""

import json
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.contrib.messages import get_messages

from accounts.models import Identity
from audit.models import AuditEvent
from catalog.models import Partner, PartnerKey, Sku, SkuStatus
from catalog.partner_scope import is_partner_staff, partner_of_staff
from marketplace.models import User
from marketplace.roles import CONTENT_OPS, PARTNER_STAFF, roles_sync
from orders.models import Order, RoyaltyLine
from tests.catalog.factories import Publisher, make_publisher, publish_sku
from tests.orders.factories import order_checked_out
from tests.orders.test_support_services import pay
from tests.support.keys import new_signing_key, public_key_b64

pytestmark = pytest.mark.django_db

SKUS = "/admin/catalog/sku/"
PARTNERS = "/admin/catalog/partner/"
KEYS = "/admin/catalog/partnerkey/"
ARTIFACTS = "/admin/catalog/artifact/"
ORDERS = "/admin/orders/order/"
ROYALTY_LINES = "/admin/orders/royaltyline/"
AUTOCOMPLETE = "/admin/autocomplete/"

# Everything of Beta's that must never reach Acme's staff.
BETA_WORDS = ("Beta Works", "beta-secret-kit", "Beta Secret Kit", "beta-live-kit", "Beta Live Kit")


def partner_staff_user(email: str, partner_slug: str, *, subject: str = "p-a") -> User:
    roles_sync()
    user = User.objects.create_user(email=email, is_staff=True)
    user.groups.add(Group.objects.get(name=PARTNER_STAFF))
    Identity.objects.create(
        user=user,
        issuer="https://id.example",
        subject=subject,
        partner_slug=partner_slug,
        roles=[PARTNER_STAFF],
    )
    return user


def messages_of(response: Any) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def shows_nothing_of_beta(response: Any) -> bool:
    body = response.content.decode()
    return not any(word in body for word in BETA_WORDS)


def listed(response: Any) -> set[Any]:
    return set(response.context["cl"].result_list)


def form_data(response: Any, **overrides: Any) -> dict[str, Any]:
    """What the browser would send back from the change page it got, with `overrides`."""
    data: dict[str, Any] = {}
    form = response.context["adminform"].form
    for name in form.fields:
        value = form[name].value()
        if isinstance(value, bool):
            if value:
                data[name] = "on"
        elif value is not None and not name.startswith("artifact_"):
            data[name] = value
    for inline in response.context["inline_admin_formsets"]:
        formset = inline.formset
        for name in formset.management_form.fields:
            data[formset.management_form.add_prefix(name)] = formset.management_form[name].value()
        for inline_form in formset.forms:
            for name in inline_form.fields:
                value = inline_form[name].value()
                if value is not None:
                    data[inline_form.add_prefix(name)] = value
    return data | overrides


@pytest.fixture
def acme(db: None) -> Publisher:
    return make_publisher(slug="acme", name="Acme Tools")


@pytest.fixture
def beta(db: None) -> Publisher:
    return make_publisher(slug="beta", name="Beta Works")


@pytest.fixture
def skus(acme: Publisher, beta: Publisher) -> dict[str, Sku]:
    return {
        "a_draft": publish_sku(acme, activate=False, slug="acme-draft-kit", title="Acme Draft Kit"),
        "a_active": publish_sku(acme, slug="acme-live-kit", title="Acme Live Kit"),
        "b_draft": publish_sku(
            beta, activate=False, slug="beta-secret-kit", title="Beta Secret Kit"
        ),
        "b_active": publish_sku(beta, slug="beta-live-kit", title="Beta Live Kit"),
    }


@pytest.fixture
def member(acme: Publisher) -> User:
    return partner_staff_user("staff@acme.example", acme.partner.slug)


@pytest.fixture
def member_client(client: Any, member: User) -> Any:
    client.force_login(member)
    return client


def audit_count() -> int:
    return AuditEvent.objects.count()


# --- Who is bound to which partner -----------------------------------------------------------


def test_partner_of_staff_is_the_partner_their_single_identity_names(member, acme, content_ops):
    assert is_partner_staff(member)
    assert partner_of_staff(member) == acme.partner
    assert (is_partner_staff(content_ops), partner_of_staff(content_ops)) == (False, None)


def test_a_superuser_in_the_partner_staff_group_is_not_narrowed(acme):
    user = partner_staff_user("root@example.com", acme.partner.slug)
    user.is_superuser = True
    user.save()
    assert (is_partner_staff(user), partner_of_staff(user)) == (False, None)


def test_two_identities_bind_a_member_to_no_partner(member, acme):
    Identity.objects.create(
        user=member, issuer="https://other.example", subject="x", partner_slug=acme.partner.slug
    )
    member = User.objects.get(pk=member.pk)
    assert (is_partner_staff(member), partner_of_staff(member)) == (True, None)


# --- SKUs: lists, search, filters ------------------------------------------------------------


def test_the_sku_list_shows_their_partners_skus_only(member_client, skus, beta):
    response = member_client.get(SKUS)

    assert response.status_code == 200
    assert listed(response) == {skus["a_draft"], skus["a_active"]}
    # The partner filter lists no other partner (with one partner to choose, it is not shown).
    assert "Acme Tools" in response.content.decode()
    assert shows_nothing_of_beta(response)

    # Naming another partner in the filter's parameter reaches nothing beyond their own.
    by_filter = member_client.get(SKUS, {"partner__id__exact": beta.partner.pk})
    assert listed(by_filter) <= {skus["a_draft"], skus["a_active"]}
    assert shows_nothing_of_beta(by_filter)


@pytest.mark.parametrize("term", ["Beta Secret Kit", "beta-live-kit", "Beta Works"])
def test_searching_for_another_partners_sku_finds_nothing(member_client, skus, term):
    response = member_client.get(SKUS, {"q": term})

    assert response.status_code == 200
    assert listed(response) == set()
    assert response.context["cl"].full_result_count == 2  # their own two, not four
    body = response.content.decode()
    assert not [word for word in BETA_WORDS if word != term and word in body]


def test_the_artifact_list_shows_their_partners_uploads_only(member_client, skus):
    response = member_client.get(ARTIFACTS)

    assert {artifact.sku for artifact in listed(response)} == {skus["a_draft"], skus["a_active"]}
    assert shows_nothing_of_beta(response)


# --- SKUs: direct URLs -------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["b_draft", "b_active"])
@pytest.mark.parametrize("page", ["change/", "history/"])
def test_another_partners_sku_by_url_shows_nothing_of_it(member_client, skus, which, page):
    sku = skus[which]

    response = member_client.get(f"{SKUS}{sku.pk}/{page}")

    # Django's answer for an object that does not exist: back to the admin's index.
    assert (response.status_code, response["Location"]) == (302, "/admin/")
    assert shows_nothing_of_beta(response)
    followed = member_client.get(response["Location"])
    assert shows_nothing_of_beta(followed)
    assert messages_of(response) == [
        f"SKU with ID \u201c{sku.pk}\u201d doesn\u2019t exist. Perhaps it was deleted?"
    ]


def test_a_post_to_another_partners_draft_changes_nothing(member_client, skus, acme):
    sku = skus["b_draft"]
    events = audit_count()

    response = member_client.post(
        f"{SKUS}{sku.pk}/change/", {"title": "Taken over", "partner": acme.partner.pk}
    )

    assert response.status_code == 302
    sku.refresh_from_db()
    assert (sku.title, sku.partner.slug) == ("Beta Secret Kit", "beta")
    assert audit_count() == events


# --- SKUs: autocomplete ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_name", "field_name"), [("sku", "partner"), ("royaltysplit", "partner")]
)
@pytest.mark.parametrize("term", ["", "Beta", "beta"])
def test_the_partner_choosers_offer_their_partner_only(
    member_client, acme, beta, model_name, field_name, term
):
    response = member_client.get(
        AUTOCOMPLETE,
        {"app_label": "catalog", "model_name": model_name, "field_name": field_name, "term": term},
    )

    assert response.status_code == 200
    ids = {item["id"] for item in response.json()["results"]}
    assert str(beta.partner.pk) not in ids
    assert ids == (set() if term else {str(acme.partner.pk)})
    assert "Beta" not in response.content.decode()


@pytest.mark.parametrize("term", ["", "Beta", "Kit"])
def test_the_sku_chooser_offers_their_skus_only(member_client, skus, term):
    response = member_client.get(
        AUTOCOMPLETE,
        {"app_label": "catalog", "model_name": "artifact", "field_name": "sku", "term": term},
    )

    assert response.status_code == 200
    ids = {item["id"] for item in response.json()["results"]}
    assert ids <= {str(skus["a_draft"].pk), str(skus["a_active"].pk)}
    assert shows_nothing_of_beta(response)


# --- SKUs: editing drafts, read-only otherwise, creating -------------------------------------


def test_editing_their_draft_works_and_is_audited_with_them_as_actor(member_client, member, skus):
    sku = skus["a_draft"]
    url = f"{SKUS}{sku.pk}/change/"
    page = member_client.get(url)
    assert page.status_code == 200
    assert page.context["has_change_permission"] is True
    splits_before = list(sku.splits.values_list("partner__slug", "basis_points"))

    response = member_client.post(
        url, form_data(page, title="Acme Draft Kit 2", summary="Now with more.")
    )

    assert response.status_code == 302, response.context and response.context["errors"]
    sku.refresh_from_db()
    assert (sku.title, sku.summary, sku.partner.slug) == (
        "Acme Draft Kit 2",
        "Now with more.",
        "acme",
    )
    assert sku.status == SkuStatus.DRAFT
    # The splits were shown, not offered: they stay as Content ops set them.
    assert list(sku.splits.values_list("partner__slug", "basis_points")) == splits_before
    event = AuditEvent.objects.filter(action="sku.updated", subject_id=str(sku.pk)).get()
    assert (event.actor_type, event.actor_id) == ("staff", str(member.uuid))
    assert event.data["changed"] == ["summary", "title"]
    assert event.data["after"]["title"] == "Acme Draft Kit 2"


def test_the_partner_of_their_draft_cannot_be_moved_to_another(member_client, skus, beta):
    sku = skus["a_draft"]
    url = f"{SKUS}{sku.pk}/change/"
    page = member_client.get(url)
    assert "partner" not in page.context["adminform"].form.fields

    response = member_client.post(url, form_data(page, partner=beta.partner.pk))

    assert response.status_code == 302
    sku.refresh_from_db()
    assert sku.partner.slug == "acme"


@pytest.mark.parametrize("status", ["active", "suspended"])
def test_their_sku_past_its_draft_is_read_only(member_client, skus, status, content_ops):
    sku = skus["a_active"]
    if status == "suspended":
        from catalog.services import sku_suspend
        from marketplace.actors import Actor

        sku_suspend(sku_id=sku.pk, reason="check", actor=Actor.of_user(content_ops))
    url = f"{SKUS}{sku.pk}/change/"
    page = member_client.get(url)
    assert page.status_code == 200
    assert page.context["has_change_permission"] is False
    assert "Acme Live Kit" in page.content.decode()
    assert 'name="_save"' not in page.content.decode()
    events = audit_count()

    response = member_client.post(url, {"title": "Renamed"})

    assert response.status_code == 403
    sku.refresh_from_db()
    assert sku.title == "Acme Live Kit"
    assert audit_count() == events


def test_a_new_sku_is_theirs_whatever_partner_the_post_names(member_client, member, acme, beta):
    from tests.catalog.factories import CategoryFactory

    category = CategoryFactory()
    page = member_client.get(f"{SKUS}add/", {"partner": beta.partner.pk})
    assert page.status_code == 200
    assert "partner" not in page.context["adminform"].form.fields
    assert "Acme Tools" in page.content.decode()
    assert "Beta Works" not in page.content.decode()

    response = member_client.post(
        f"{SKUS}add/",
        {
            "title": "Acme New Kit",
            "slug": "acme-new-kit",
            "partner": beta.partner.pk,
            "category": category.pk,
            "version": "2.0.0",
            "price_amount": "2500",
            "currency": "usd",
            "license_seats": "1",
            "license_entitlements": "[]",
            "preview_ttl_seconds": "900",
            "splits-TOTAL_FORMS": "0",
            "splits-INITIAL_FORMS": "0",
            "splits-MIN_NUM_FORMS": "0",
            "splits-MAX_NUM_FORMS": "1000",
        },
    )

    assert response.status_code == 302, response.context and response.context["errors"]
    sku = Sku.objects.get(slug="acme-new-kit")
    assert (sku.partner, sku.status) == (acme.partner, SkuStatus.DRAFT)
    event = AuditEvent.objects.filter(action="sku.created", subject_id=str(sku.pk)).get()
    assert (event.actor_type, event.actor_id) == ("staff", str(member.uuid))
    assert "beta" not in json.dumps(event.data)


# --- SKUs: actions -----------------------------------------------------------------------------


def test_publishing_actions_are_not_theirs(member_client, skus):
    page = member_client.get(SKUS)
    offered = {name for name, _ in page.context["action_form"].fields["action"].choices}
    assert offered == {"", "verify_manifest"}

    sku = skus["a_draft"]
    response = member_client.post(SKUS, {"action": "activate", "_selected_action": [sku.pk]})

    assert response.status_code == 302
    sku.refresh_from_db()
    assert sku.status == SkuStatus.DRAFT


def test_an_action_reaches_their_drafts_only(member_client, skus):
    selected = [sku.pk for sku in skus.values()]
    last = AuditEvent.objects.order_by("-pk").values_list("pk", flat=True).first()

    response = member_client.post(
        SKUS, {"action": "verify_manifest", "_selected_action": selected}, follow=True
    )

    assert response.status_code == 200
    assert shows_nothing_of_beta(response)
    verified = set(AuditEvent.objects.filter(pk__gt=last).values_list("subject_id", flat=True))
    assert verified == {str(skus["a_draft"].pk)}
    assert messages_of(response)[0] == "acme-live-kit: not a draft; Content ops verify it."


# --- Partner and keys --------------------------------------------------------------------------


def test_the_partner_list_shows_their_partner_read_only(member_client, acme, beta):
    response = member_client.get(PARTNERS)
    assert listed(response) == {acme.partner}
    assert shows_nothing_of_beta(response)

    url = f"{PARTNERS}{acme.partner.pk}/change/"
    page = member_client.get(url)
    assert page.status_code == 200
    assert page.context["has_change_permission"] is False
    events = audit_count()

    refused = member_client.post(url, {"name": "Acme Renamed", "slug": "acme", "kind": "publisher"})

    assert refused.status_code == 403
    acme.partner.refresh_from_db()
    assert acme.partner.name == "Acme Tools"
    assert audit_count() == events
    assert member_client.get(f"{PARTNERS}add/").status_code == 403

    other = member_client.get(f"{PARTNERS}{beta.partner.pk}/change/")
    assert other.status_code == 302
    assert shows_nothing_of_beta(other)


def test_they_see_their_partners_keys_only(member_client, acme, beta):
    response = member_client.get(KEYS)
    assert {key.partner for key in listed(response)} == {acme.partner}
    assert shows_nothing_of_beta(response)
    assert response.context["action_form"] is None  # revoking is Content ops' and Security's

    beta_key = PartnerKey.objects.get(partner=beta.partner)
    other = member_client.get(f"{KEYS}{beta_key.pk}/change/")
    assert other.status_code == 302
    assert shows_nothing_of_beta(other)

    acme_key = PartnerKey.objects.get(partner=acme.partner)
    member_client.post(
        KEYS, {"action": "revoke", "_selected_action": [acme_key.pk], "reason": "x", "apply": "1"}
    )
    acme_key.refresh_from_db()
    assert acme_key.status == "active"


def test_they_register_a_key_for_their_own_partner(member_client, member, acme, beta):
    public_key = public_key_b64(new_signing_key())

    response = member_client.post(
        f"{KEYS}add/", {"key_id": "k2", "public_key": public_key, "partner": beta.partner.pk}
    )

    assert response.status_code == 302, response.context and response.context["errors"]
    key = PartnerKey.objects.get(key_id="k2")
    assert (key.partner, key.public_key) == (acme.partner, public_key)
    assert not PartnerKey.objects.filter(partner=beta.partner, key_id="k2").exists()
    event = AuditEvent.objects.filter(action="partner.key_registered").latest("pk")
    assert (event.actor_id, event.subject_id) == (str(member.uuid), str(acme.partner.pk))


def test_a_key_refused_by_the_service_is_shown_at_its_field(member_client, acme):
    taken = PartnerKey.objects.get(partner=acme.partner)

    response = member_client.post(
        f"{KEYS}add/", {"key_id": "k1", "public_key": public_key_b64(new_signing_key())}
    )

    assert response.status_code == 200
    assert response.context["adminform"].form.errors["key_id"]
    assert PartnerKey.objects.filter(partner=acme.partner).get() == taken


# --- Sales and royalty lines -------------------------------------------------------------------


@pytest.fixture
def sales(buyer: User, skus: dict[str, Sku]) -> dict[str, Order]:
    return {
        "a": pay(order_checked_out(buyer, skus["a_active"])),
        "b": pay(order_checked_out(buyer, skus["b_active"])),
    }


def test_they_see_their_partners_sales_without_the_buyer(member_client, sales, buyer):
    response = member_client.get(ORDERS)

    assert listed(response) == {sales["a"]}
    body = response.content.decode()
    assert "beta-live-kit" not in body
    assert buyer.email not in body

    page = member_client.get(f"{ORDERS}{sales['a'].pk}/change/")
    assert page.status_code == 200
    assert "acme-live-kit" in page.content.decode()
    assert buyer.email not in page.content.decode()
    assert "Timeline" not in page.content.decode()

    by_email = member_client.get(ORDERS, {"q": buyer.email})
    assert listed(by_email) == set()


def test_their_sales_show_no_other_partners_share_nor_the_payments_ids(member_client, sales):
    order = sales["a"]

    page = member_client.get(f"{ORDERS}{order.pk}/change/").content.decode()

    assert "Royalty splits" not in page
    assert order.checkout_session_id not in page
    assert (order.payment_intent_id or "no-intent") not in page


def test_they_cannot_tell_which_sales_share_a_buyer(member_client, sales, buyer):
    response = member_client.get(ORDERS, {"buyer": buyer.pk})

    assert response.status_code == 400


def test_another_partners_sale_by_url_or_search_shows_nothing_of_it(member_client, sales):
    order = sales["b"]

    response = member_client.get(f"{ORDERS}{order.pk}/change/")
    assert response.status_code == 302
    assert shows_nothing_of_beta(response)

    for term in (str(order.pk), "beta-live-kit", order.checkout_session_id):
        assert listed(member_client.get(ORDERS, {"q": term})) == set()


def test_they_see_their_partners_royalty_lines_only(member_client, sales, acme):
    response = member_client.get(ROYALTY_LINES)

    assert listed(response) == set(RoyaltyLine.objects.filter(partner=acme.partner))
    assert {line.order for line in listed(response)} == {sales["a"]}
    assert shows_nothing_of_beta(response)

    beta_line = RoyaltyLine.objects.get(order=sales["b"])
    other = member_client.get(f"{ROYALTY_LINES}{beta_line.pk}/change/")
    assert other.status_code == 302
    assert shows_nothing_of_beta(other)
    assert listed(member_client.get(ROYALTY_LINES, {"q": "beta"})) == set()


# --- Bound to no partner -----------------------------------------------------------------------


@pytest.mark.parametrize("slug", ["", "no-such-partner"])
def test_a_member_bound_to_no_known_partner_sees_nothing(client, skus, sales, slug):
    client.force_login(partner_staff_user("lost@example.com", slug))

    for url in (SKUS, PARTNERS, KEYS, ARTIFACTS, ORDERS, ROYALTY_LINES):
        response = client.get(url)
        assert response.status_code == 200, url
        assert listed(response) == set(), url
    assert client.get(f"{SKUS}add/").status_code == 403
    assert client.get(f"{KEYS}add/").status_code == 403
    assert client.get(f"{SKUS}{skus['a_draft'].pk}/change/").status_code == 302
    chooser = client.get(
        AUTOCOMPLETE, {"app_label": "catalog", "model_name": "sku", "field_name": "partner"}
    )
    assert chooser.json()["results"] == []


# --- Everyone else, as before ------------------------------------------------------------------


def test_content_ops_still_see_every_partner(client, content_ops, skus, acme, beta):
    client.force_login(content_ops)

    response = client.get(SKUS)
    assert listed(response) == set(skus.values())
    assert "Beta Works" in response.content.decode()
    offered = {name for name, _ in response.context["action_form"].fields["action"].choices}
    assert {"activate", "suspend", "retire", "verify_manifest"} <= offered
    page = client.get(f"{SKUS}{skus['b_draft'].pk}/change/")
    assert (page.status_code, page.context["has_change_permission"]) == (200, True)
    assert "partner" in page.context["adminform"].form.fields
    assert listed(client.get(PARTNERS)) == set(Partner.objects.all())
    assert {key.partner for key in listed(client.get(KEYS))} == {acme.partner, beta.partner}
    chooser = client.get(
        AUTOCOMPLETE, {"app_label": "catalog", "model_name": "sku", "field_name": "partner"}
    )
    ids = {item["id"] for item in chooser.json()["results"]}
    assert ids == {str(acme.partner.pk), str(beta.partner.pk)}
    assert client.get(f"{KEYS}add/").status_code == 403  # registered on the partner's page
    assert {CONTENT_OPS} == set(content_ops.groups.values_list("name", flat=True))


def test_finance_still_sees_every_sale_and_royalty_line(client, finance_staff, sales, buyer):
    client.force_login(finance_staff)

    assert listed(client.get(ORDERS)) == set(sales.values())
    assert buyer.email in client.get(ORDERS).content.decode()
    assert listed(client.get(ROYALTY_LINES)) == set(RoyaltyLine.objects.all())
    page = client.get(f"{ORDERS}{sales['b'].pk}/change/")
    assert "Timeline" in page.content.decode()
