"""Dividing an order's amount among its partners.

Each partner gets floor(amount * basis_points / 10,000) minor units. What rounding down leaves
(fewer minor units than there are partners) goes to one documented party: the seller (the SKU's
own partner) when it has a split, otherwise the partner with the largest split, the lowest slug
among equals. The lines therefore always sum to the amount.
"""

from collections.abc import Sequence
from dataclasses import dataclass

WHOLE = 10_000


@dataclass(frozen=True)
class Share:
    partner: str
    basis_points: int
    amount: int
    receives_remainder: bool


def remainder_party(splits: Sequence[tuple[str, int]], seller: str) -> str:
    partners = [partner for partner, _ in splits]
    if seller in partners:
        return seller
    return min(splits, key=lambda split: (-split[1], split[0]))[0]


def royalty_shares(amount: int, splits: Sequence[tuple[str, int]], seller: str) -> list[Share]:
    """Precondition: the splits name distinct partners and their basis points sum to 10,000
    (catalog refuses to activate a SKU otherwise)."""
    if amount < 0:
        raise ValueError("amount must not be negative")
    if not splits or sum(points for _, points in splits) != WHOLE:
        raise ValueError("splits must sum to 10,000 basis points")
    floors = {partner: amount * points // WHOLE for partner, points in splits}
    remainder = amount - sum(floors.values())
    to = remainder_party(splits, seller)
    return [
        Share(
            partner=partner,
            basis_points=points,
            amount=floors[partner] + (remainder if partner == to else 0),
            receives_remainder=partner == to and remainder > 0,
        )
        for partner, points in splits
    ]
