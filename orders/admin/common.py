"""What the orders admin pages share."""

import json
from collections import Counter
from datetime import UTC
from typing import Any

from django.contrib import admin, messages
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from orders.models import PostingStatus

DELIVERY_LABELS = {
    "released": "Released",
    "not_paid": "Not paid",
    "finance_pending": "Waiting for Finance",
    "manual": "Held by staff",
    "disputed": "Held: disputed",
    "refunded": "Refunded",
}


def order_admin_link(order_id: Any) -> SafeString | str:
    if order_id is None:
        return "—"
    url = reverse("admin:orders_order_change", args=[order_id])
    return format_html('<a href="{}">{}</a>', url, order_id)


def utc(value: Any) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "—"


def pretty_json(value: Any) -> SafeString:
    return format_html(
        '<pre class="orders-json">{}</pre>',
        json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False),
    )


def report_postings(
    modeladmin: admin.ModelAdmin, request: HttpRequest, results: Counter, *, subject: str
) -> None:
    if not results:
        modeladmin.message_user(
            request, f"{subject}: no posting is waiting for Finance.", messages.INFO
        )
        return
    if results[PostingStatus.POSTED]:
        modeladmin.message_user(
            request,
            f"{subject}: {results[PostingStatus.POSTED]} posting(s) acknowledged by Finance.",
            messages.SUCCESS,
        )
    if results[PostingStatus.PENDING]:
        modeladmin.message_user(
            request,
            f"{subject}: {results[PostingStatus.PENDING]} posting(s) could not reach Finance and "
            "wait for the next replay (see their last error).",
            messages.WARNING,
        )
    if results[PostingStatus.REJECTED]:
        modeladmin.message_user(
            request,
            f"{subject}: {results[PostingStatus.REJECTED]} posting(s) rejected by Finance "
            "(see their last error).",
            messages.ERROR,
        )
