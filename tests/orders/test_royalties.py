"""Royalty shares: floor(amount * basis points / 10,000) each, the rounding remainder to one
documented party (the seller when it has a split, else the largest split, lowest slug among
equals), and the lines always sum to the amount."""

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orders.models import OrderStatus, RoyaltyLine
from orders.royalties import WHOLE, remainder_party, royalty_shares
from orders.services import webhook_event_process, webhook_receive, webhook_secrets
from tests.catalog.factories import make_publisher
from tests.orders.factories import PartnerFactory, order_checked_out, sku_for_sale
from tests.orders.stripe_events import session_event, signed

slugs = st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True)


@st.composite
def royalty_cases(draw: st.DrawFn) -> tuple[int, list[tuple[str, int]], str]:
    partners = draw(st.lists(slugs, min_size=1, max_size=20, unique=True))
    # n - 1 distinct cut points in 1..9,999 give n splits of at least one basis point each.
    cuts = sorted(
        draw(
            st.lists(
                st.integers(1, WHOLE - 1),
                min_size=len(partners) - 1,
                max_size=len(partners) - 1,
                unique=True,
            )
        )
    )
    bounds = [0, *cuts, WHOLE]
    splits = [(partner, bounds[i + 1] - bounds[i]) for i, partner in enumerate(partners)]
    seller = draw(
        st.one_of(st.sampled_from(partners), slugs.filter(lambda slug: slug not in partners))
    )
    amount = draw(st.integers(0, 10**12))
    return amount, splits, seller


def documented_party(splits: list[tuple[str, int]], seller: str) -> str:
    if seller in dict(splits):
        return seller
    return sorted(splits, key=lambda split: (-split[1], split[0]))[0][0]


@settings(max_examples=250, deadline=None)
@given(royalty_cases())
def test_lines_sum_to_the_amount_and_only_the_documented_party_gets_the_remainder(case):
    amount, splits, seller = case
    shares = royalty_shares(amount, splits, seller)

    assert [(s.partner, s.basis_points) for s in shares] == splits
    assert sum(s.amount for s in shares) == amount
    assert all(s.amount >= 0 for s in shares)
    exact = {partner: Fraction(amount * points, WHOLE) for partner, points in splits}
    remainder = amount - sum(int(value) for value in exact.values())
    assert 0 <= remainder < len(splits)  # each floor loses less than one minor unit
    party = documented_party(splits, seller)
    assert remainder_party(splits, seller) == party
    for share in shares:
        assert abs(share.amount - exact[share.partner]) <= remainder
        if share.partner == party:
            assert share.amount == int(exact[share.partner]) + remainder
            assert share.receives_remainder is (remainder > 0)
        else:
            assert share.amount == int(exact[share.partner])
            assert share.receives_remainder is False


def amounts(shares) -> list[tuple[str, int, bool]]:
    return [(s.partner, s.amount, s.receives_remainder) for s in shares]


def test_thirds_give_the_remainder_to_the_seller():
    splits = [("alpha", 3333), ("beta", 3333), ("gamma", 3334)]
    assert amounts(royalty_shares(1000, splits, "beta")) == [
        ("alpha", 333, False),
        ("beta", 334, True),
        ("gamma", 333, False),
    ]


def test_seller_without_a_split_leaves_the_remainder_to_the_largest_share():
    splits = [("alpha", 3333), ("beta", 3333), ("gamma", 3334)]
    assert amounts(royalty_shares(1000, splits, "someone-else")) == [
        ("alpha", 333, False),
        ("beta", 333, False),
        ("gamma", 334, True),
    ]


def test_equal_largest_shares_go_to_the_lowest_slug():
    splits = [("zeta", 4000), ("beta", 4000), ("alpha", 2000)]
    assert amounts(royalty_shares(1, splits, "nobody")) == [
        ("zeta", 0, False),
        ("beta", 1, True),
        ("alpha", 0, False),
    ]


def test_an_exact_division_has_no_remainder():
    assert amounts(royalty_shares(1000, [("a", 5000), ("b", 5000)], "a")) == [
        ("a", 500, False),
        ("b", 500, False),
    ]
    assert amounts(royalty_shares(0, [("a", 10_000)], "a")) == [("a", 0, False)]


@pytest.mark.parametrize(
    ("amount", "splits", "message"),
    [
        (-1, [("a", 10_000)], "negative"),
        (100, [], "10,000"),
        (100, [("a", 5000), ("b", 4999)], "10,000"),
    ],
)
def test_impossible_inputs_are_refused(amount, splits, message):
    with pytest.raises(ValueError, match=message):
        royalty_shares(amount, splits, "a")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("points", "expected"),
    [
        # 1001 * 3333 // 10,000 = 333 twice and 1001 * 3334 // 10,000 = 333: 2 left over.
        (
            (3333, 3333, 3334),
            {"seller": (335, True), "second": (333, False), "third": (333, False)},
        ),
        # The seller's split is the smallest; it still gets the remainder (100 + 450 + 450).
        (
            (1000, 4500, 4500),
            {"seller": (101, True), "second": (450, False), "third": (450, False)},
        ),
    ],
)
def test_a_paid_order_gets_royalty_lines_that_sum_to_its_amount(buyer, points, expected):
    publisher = make_publisher()
    partners = [publisher.partner, PartnerFactory(slug="second"), PartnerFactory(slug="third")]
    sku = sku_for_sale(publisher, price=1001, splits=list(zip(partners, points, strict=True)))
    order = order_checked_out(buyer, sku)
    assert order.seller_slug == publisher.partner.slug
    body, header = signed(session_event("checkout.session.completed", order), webhook_secrets()[0])
    stored, _ = webhook_receive(payload=body, signature=header)
    webhook_event_process(event_pk=stored.pk)
    order.refresh_from_db()
    assert order.status == OrderStatus.PAID

    rows = RoyaltyLine.objects.filter(order=order).select_related("partner")
    lines = {
        ("seller" if row.partner_id == publisher.partner.pk else row.partner.slug): (
            row.amount,
            row.receives_remainder,
        )
        for row in rows
    }
    assert lines == expected
    assert sum(amount for amount, _ in lines.values()) == order.amount == 1001
    assert {(row.currency, row.basis_points) for row in rows} == {
        (order.currency, p) for p in points
    }
