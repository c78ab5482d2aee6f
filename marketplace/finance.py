"""Client of Finance, the company's ledger service.

`get_finance()` returns the HTTP backend when MARKETPLACE_FINANCE_URL is set (bearer token
MARKETPLACE_FINANCE_TOKEN) and the local backend otherwise, which keeps the ledger in the
`marketplace_ledgerentry` table.

The ledger API (docs/payments.md, "Finance"):

    POST {FINANCE_URL}/v1/ledger/entries            Authorization: Bearer <token>
         Idempotency-Key: <key>                      the order id for a sale
    {"order_id": uuid, "kind": "sale"|"refund", "amount": int (minor units, refunds negative),
     "currency": "EUR", "occurred_at": ISO 8601, "royalties": [{"partner", "amount"}, ...]}

    200 or 201 {"id": "<ledger reference>"}   recorded; the same key again answers the same id
    409                                       the key was used with another body: a rejection
    other 4xx                                 a rejection (FinanceRejected)
    5xx, timeout, unreadable answer           FinanceUnavailable: send again later

    GET {FINANCE_URL}/v1/ledger/entries?order_id=<uuid>&order_id=<uuid>...
    200 {"entries": [{"id", "order_id", "kind", "amount", "currency"}, ...]}
"""

import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import requests
from django.conf import settings
from django.db import IntegrityError, transaction

from marketplace.models import LedgerEntry


class FinanceUnavailable(Exception):
    """Finance could not be reached or failed to answer: the entry is still to be sent."""


class FinanceRejected(Exception):
    """Finance refused the entry itself: sending it again unchanged will not help."""


@dataclass(frozen=True)
class LedgerLine:
    reference: str
    order_id: str
    kind: str
    amount: int
    currency: str


class Finance(Protocol):
    name: str

    def entry_post(self, *, idempotency_key: str, entry: dict[str, Any]) -> str:
        """Records an entry once per key and answers its ledger reference."""
        ...

    def entries_for(self, order_ids: Sequence[str]) -> list[LedgerLine]: ...


class LocalFinance:
    name = "local"

    def entry_post(self, *, idempotency_key: str, entry: dict[str, Any]) -> str:
        existing = LedgerEntry.objects.filter(idempotency_key=idempotency_key).first()
        if existing is not None:
            return self._same_or_refuse(existing, entry)
        try:
            with transaction.atomic():
                row = LedgerEntry.objects.create(
                    idempotency_key=idempotency_key,
                    reference="led_" + secrets.token_hex(12),
                    order_id=entry["order_id"],
                    kind=entry["kind"],
                    amount=entry["amount"],
                    currency=entry["currency"],
                    payload=entry,
                )
        except IntegrityError:
            # Another sender recorded the same key first: answer its reference.
            return self._same_or_refuse(
                LedgerEntry.objects.get(idempotency_key=idempotency_key), entry
            )
        return row.reference

    @staticmethod
    def _same_or_refuse(existing: LedgerEntry, entry: dict[str, Any]) -> str:
        if (existing.amount, existing.currency, existing.kind) != (
            entry["amount"],
            entry["currency"],
            entry["kind"],
        ):
            raise FinanceRejected(
                f"idempotency key {existing.idempotency_key} was used for another entry"
            )
        return existing.reference

    def entries_for(self, order_ids: Sequence[str]) -> list[LedgerLine]:
        return [
            LedgerLine(row.reference, str(row.order_id), row.kind, row.amount, row.currency)
            for row in LedgerEntry.objects.filter(order_id__in=list(order_ids))
        ]


class HttpFinance:
    name = "http"

    def __init__(self) -> None:
        self.base = settings.FINANCE_URL
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {settings.FINANCE_TOKEN}"
        self.timeout = settings.FINANCE_TIMEOUT_SECONDS

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            # Redirects are not followed: requests would turn a redirected POST into a GET.
            response = self.session.request(
                method, self.base + path, timeout=self.timeout, allow_redirects=False, **kwargs
            )
        except requests.RequestException as exc:
            raise FinanceUnavailable(f"Finance unreachable: {exc.__class__.__name__}") from exc
        if 300 <= response.status_code < 400:
            # A misconfigured MARKETPLACE_FINANCE_URL (http for https, a moved host): kept and
            # retried until the setting is fixed, rather than rejected for good.
            raise FinanceUnavailable(
                f"Finance redirected ({response.status_code}) to "
                f"{response.headers.get('Location', '?')}: check MARKETPLACE_FINANCE_URL"
            )
        if response.status_code >= 500 or response.status_code == 429:
            raise FinanceUnavailable(f"Finance answered {response.status_code}")
        if response.status_code >= 400:
            raise FinanceRejected(
                f"Finance refused ({response.status_code}): {response.text[:300]}"
            )
        try:
            return response.json()
        except ValueError as exc:
            raise FinanceUnavailable("Finance answered something that is not JSON") from exc

    def entry_post(self, *, idempotency_key: str, entry: dict[str, Any]) -> str:
        body = self._request(
            "POST",
            "/v1/ledger/entries",
            json=entry,
            headers={"Idempotency-Key": idempotency_key},
        )
        reference = body.get("id") if isinstance(body, dict) else None
        if not isinstance(reference, str) or not reference:
            raise FinanceUnavailable("Finance's answer has no entry id")
        return reference

    def entries_for(self, order_ids: Sequence[str]) -> list[LedgerLine]:
        lines: list[LedgerLine] = []
        ids = list(order_ids)
        for start in range(0, len(ids), 100):
            body = self._request(
                "GET",
                "/v1/ledger/entries",
                params=[("order_id", i) for i in ids[start : start + 100]],
            )
            items = body.get("entries") if isinstance(body, dict) else None
            if not isinstance(items, list):
                raise FinanceUnavailable("Finance's answer has no list of entries")
            try:
                lines.extend(
                    LedgerLine(
                        str(item["id"]),
                        # Compared with our ids as text: one spelling of a UUID on both sides.
                        str(uuid.UUID(str(item["order_id"]))),
                        str(item["kind"]),
                        int(item["amount"]),
                        str(item["currency"]),
                    )
                    for item in items
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise FinanceUnavailable(f"Finance answered an unreadable entry: {exc!r}") from exc
        return lines


def get_finance() -> Finance:
    return HttpFinance() if settings.FINANCE_URL else LocalFinance()
