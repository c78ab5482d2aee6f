"""Orders: the list, the page with its timeline, and refund, hold, release and replay."""

import json
import re
import uuid
from collections import Counter
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.views.decorators.http import require_POST

from accounts.approval_services import approval_next_step
from accounts.models import ApprovalRequest
from audit.admin.changelist import USER_ACTORS, emails_by_uuid
from catalog.partner_scope import is_partner_staff, partner_scope
from marketplace.actors import Actor
from marketplace.admin.helpers import ReadOnlyAdmin, reason_action
from marketplace.exceptions import ApplicationError
from marketplace.money import format_amount
from marketplace.roles import may_take_order_action
from orders import selectors, services
from orders.admin.common import (
    DELIVERY_LABELS,
    pretty_json,
    report_postings,
    utc,
)
from orders.approvals import order_refund_or_request
from orders.models import FinancePosting, Order, PostingStatus

# --- Forms ---------------------------------------------------------------------------------------

_WHOLE_NUMBER = re.compile(r"^[+-]?\d+$")


class RefundForm(forms.Form):
    scope = forms.ChoiceField(
        choices=[("full", "Everything not refunded yet"), ("partial", "Part of it")],
        widget=forms.RadioSelect,
        initial="full",
        label="Refund",
    )
    amount = forms.CharField(
        required=False,
        label="Amount (minor units)",
        help_text="For a partial refund: a whole number of the currency's minor units "
        "(250 is 2.50 USD).",
        widget=forms.TextInput(attrs={"size": 12, "inputmode": "numeric"}),
    )
    reason = forms.CharField(
        max_length=300,
        label="Reason",
        help_text="Kept with the refund and in the audit log.",
        widget=forms.Textarea(attrs={"rows": 3, "cols": 80}),
    )
    # One per form shown: the same form sent twice refunds once (orders.services.order_refund).
    request_key = forms.CharField(widget=forms.HiddenInput)

    def __init__(self, *args: Any, order: Order, refundable: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.order = order
        self.fields["scope"].choices = [
            ("full", f"Everything not refunded yet ({format_amount(refundable, order.currency)})"),
            ("partial", "Part of it"),
        ]
        if not self.is_bound:
            self.initial["request_key"] = uuid.uuid4().hex

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("scope") != "partial":
            data["amount"] = None
            return data
        text = (data.get("amount") or "").strip()
        currency = self.order.currency
        if not text:
            self.add_error("amount", "Enter the amount to refund, in minor units.")
        elif not _WHOLE_NUMBER.match(text):
            self.add_error(
                "amount",
                f"Enter the amount as a whole number of minor units "
                f"(e.g. 250 for {format_amount(250, currency)}), not “{text[:20]}”.",
            )
        else:
            # What the amount may be (positive, at most what is left) is the service's rule:
            # its refusal is shown at this field (refund_view).
            data["amount"] = int(text)
        return data


class HoldForm(forms.Form):
    reason = forms.CharField(
        max_length=300,
        label="Reason",
        help_text="Why the delivery waits: kept on the order and in the audit log.",
        widget=forms.Textarea(attrs={"rows": 3, "cols": 80}),
    )


def _service_error_to_form(form: forms.Form, exc: ApplicationError) -> None:
    """A service's refusal, at the field it names (with the service's words for it)."""
    for name, messages_ in (exc.errors or {}).items():
        if name in form.fields:
            form.add_error(name, messages_)
            return
    form.add_error(None, exc.detail)


# What Partner staff do not see of their sales: who bought, the payment's own ids, and the
# other partners' shares.
_NOT_THEIRS = frozenset(
    {"buyer_email", "splits_pretty", "payment_intent_id", "checkout_session_id"}
)


@admin.register(Order)
class OrderAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "buyer_email",
        "sku_slug",
        "amount_display",
        "status",
        "delivery",
        "created_at",
    ]
    list_filter = [
        "status",
        "delivery_hold",
        "finance_pending",
        "gateway",
        "currency",
        ("created_at", admin.DateFieldListFilter),
    ]
    list_select_related = ["buyer"]
    search_fields = ["=buyer__email", "=sku_slug", "=checkout_session_id", "=payment_intent_id"]
    search_help_text = (
        "An order id, a buyer's email, a SKU slug, a checkout session id or a payment intent id."
    )
    show_facets = admin.ShowFacets.NEVER
    actions = ["hold_selected", "release_selected", "replay_finance_selected"]
    fieldsets = [
        (
            None,
            {"fields": ["id", "buyer_email", "status", "status_changed_at", "created_at"]},
        ),
        (
            "Payment",
            {
                "fields": [
                    "amount_display",
                    "refunded_display",
                    "gateway",
                    "checkout_session_id",
                    "payment_intent_id",
                    "paid_at",
                ]
            },
        ),
        ("Delivery", {"fields": ["delivery", "finance_pending", "delivery_hold", "hold_reason"]}),
        (
            "Snapshot (the SKU as sold)",
            {"fields": ["sku_link", "sku_title", "sku_version", "seller_slug", "splits_pretty"]},
        ),
    ]
    readonly_fields = [
        "id",
        "buyer_email",
        "status",
        "status_changed_at",
        "created_at",
        "amount_display",
        "refunded_display",
        "gateway",
        "checkout_session_id",
        "payment_intent_id",
        "paid_at",
        "delivery",
        "finance_pending",
        "delivery_hold",
        "hold_reason",
        "sku_link",
        "sku_title",
        "sku_version",
        "seller_slug",
        "splits_pretty",
    ]

    # --- Partner staff: their partner's sales, without the buyers ---

    def get_queryset(self, request: HttpRequest) -> QuerySet[Order]:
        # The seller is the snapshot's, not the SKU's partner today: a suspended SKU may move
        # to another partner, whose staff must not see the sales made before.
        return partner_scope(
            super().get_queryset(request),
            request.user,
            lambda partner: Q(seller_slug=partner.slug),
        )

    def get_list_display(self, request: HttpRequest) -> list[str]:
        if is_partner_staff(request.user):
            return [name for name in self.list_display if name != "buyer_email"]
        return list(self.list_display)

    def get_search_fields(self, request: HttpRequest) -> list[str]:
        if is_partner_staff(request.user):
            return [name for name in self.search_fields if name != "=buyer__email"]
        return list(self.search_fields)

    def get_fieldsets(self, request: HttpRequest, obj: Order | None = None) -> list[Any]:
        if not is_partner_staff(request.user):
            return self.fieldsets
        return [
            (name, {**options, "fields": [f for f in options["fields"] if f not in _NOT_THEIRS]})
            for name, options in self.fieldsets
        ]

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        # `?buyer=<id>` would tell them which of their sales share a buyer.
        if request is not None and is_partner_staff(request.user) and lookup.startswith("buyer"):
            return False
        return super().lookup_allowed(lookup, value, request)

    # --- Columns and fields ---

    @admin.display(description="Buyer", ordering="buyer__email")
    def buyer_email(self, order: Order) -> str:
        return order.buyer.email

    @admin.display(description="Amount", ordering="amount")
    def amount_display(self, order: Order) -> str:
        return format_amount(order.amount, order.currency)

    @admin.display(description="Refunded")
    def refunded_display(self, order: Order) -> str:
        return format_amount(order.amount_refunded, order.currency)

    @admin.display(description="Delivery")
    def delivery(self, order: Order) -> str:
        state = order.delivery_state
        return DELIVERY_LABELS.get(state, state)

    @admin.display(description="SKU")
    def sku_link(self, order: Order) -> SafeString:
        return format_html(
            '<a href="{}">{}</a>',
            reverse("admin:catalog_sku_change", args=[order.sku_id]),
            order.sku_slug,
        )

    @admin.display(description="Royalty splits")
    def splits_pretty(self, order: Order) -> SafeString:
        return pretty_json(order.splits)

    # --- Search ---

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        term = search_term.strip()
        try:
            order_id = uuid.UUID(term)
        except ValueError:
            return super().get_search_results(request, queryset, term)
        return queryset.filter(pk=order_id), False

    # --- Who may do what ---

    def has_refund_permission(self, request: HttpRequest) -> bool:
        return may_take_order_action(request.user, "refund")

    def has_hold_permission(self, request: HttpRequest) -> bool:
        return may_take_order_action(request.user, "hold_delivery")

    def has_release_permission(self, request: HttpRequest) -> bool:
        return may_take_order_action(request.user, "release_delivery")

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return may_take_order_action(request.user, "replay_finance")

    # --- Pages ---

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path("<path:object_id>/refund/", wrap(self.refund_view), name="orders_order_refund"),
            path("<path:object_id>/hold/", wrap(self.hold_view), name="orders_order_hold"),
            path("<path:object_id>/release/", wrap(self.release_view), name="orders_order_release"),
            path(
                "<path:object_id>/replay-finance/",
                wrap(self.replay_finance_view),
                name="orders_order_replay_finance",
            ),
            *super().get_urls(),
        ]

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        order = self.get_object(request, unquote(object_id))
        # Partner staff get the order's fields only: its refunds, postings, webhook events,
        # timeline and other partners' royalty lines are not theirs (their own royalty lines
        # have their page, orders.admin.royalties).
        if (
            order is not None
            and self.has_view_permission(request, order)
            and not is_partner_staff(request.user)
        ):
            extra_context = {**(extra_context or {}), **self._order_context(request, order)}
        return super().change_view(request, object_id, form_url, extra_context)

    def _order_context(self, request: HttpRequest, order: Order) -> dict[str, Any]:
        refundable = services.order_refundable_amount(order)
        return {
            "can_refund": self.has_refund_permission(request) and refundable > 0,
            "can_hold": self.has_hold_permission(request),
            "can_release": self.has_release_permission(request) and bool(order.delivery_hold),
            "can_replay_finance": self.has_replay_permission(request)
            and order.finance_postings.filter(status=PostingStatus.PENDING).exists(),
            "refundable": format_amount(refundable, order.currency),
            "royalty_lines": [
                (
                    line.partner.slug,
                    line.basis_points,
                    format_amount(line.amount, line.currency),
                    line.receives_remainder,
                )
                for line in order.royalty_lines.select_related("partner").order_by("partner__slug")
            ],
            "refunds": list(order.refunds.all()),
            "postings": list(order.finance_postings.order_by("created_at", "id")),
            "webhook_events": list(
                order.webhook_events.order_by("received_at", "id").only(
                    "id", "event_id", "type", "status", "attempts", "received_at", "order_id"
                )
            ),
            "timeline": self._timeline(order),
            "can_read_audit": request.user.has_perm("audit.view_auditevent"),
        }

    def _timeline(self, order: Order) -> list[dict[str, Any]]:
        events = list(selectors.order_timeline(order))
        emails = emails_by_uuid({e.actor_id for e in events if e.actor_type in USER_ACTORS})
        return [
            {
                # The audit admin's pages are by primary key; the sequence comes with the seal.
                "pk": event.pk,
                "sequence": event.sequence,
                "when": utc(event.occurred_at),
                "actor": f"{event.get_actor_type_display()} "
                f"{emails.get(event.actor_id) or event.actor_id or ''}".strip(),
                "action": event.action,
                "data": json.dumps(event.data, sort_keys=True, ensure_ascii=False),
            }
            for event in events
        ]

    def _action_order(self, request: HttpRequest, object_id: str, allowed: bool) -> Order:
        if not allowed:
            raise PermissionDenied
        order = self.get_object(request, unquote(object_id))
        if order is None:
            raise Http404(f"There is no order {object_id}.")
        return order

    def _back(self, order: Order) -> HttpResponseRedirect:
        return HttpResponseRedirect(reverse("admin:orders_order_change", args=[order.pk]))

    def _form_page(
        self, request: HttpRequest, order: Order, form: forms.Form, *, title: str, intro: str
    ) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "intro": intro,
            "opts": self.opts,
            "original": order,
            "form": form,
            "amount": format_amount(order.amount, order.currency),
        }
        return TemplateResponse(request, "admin/orders/order/action_form.html", context)

    def refund_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        order = self._action_order(request, object_id, self.has_refund_permission(request))
        refundable = services.order_refundable_amount(order)
        form = RefundForm(request.POST or None, order=order, refundable=refundable)
        if request.method == "POST" and form.is_valid():
            try:
                refund = order_refund_or_request(
                    order_id=order.pk,
                    amount=form.cleaned_data["amount"],
                    reason=form.cleaned_data["reason"],
                    requested_by=request.user,
                    request_key=form.cleaned_data["request_key"],
                )
            except ApplicationError as exc:
                _service_error_to_form(form, exc)
            else:
                if isinstance(refund, ApprovalRequest):
                    limit = format_amount(settings.APPROVAL_REFUND_MINOR, order.currency)
                    self.message_user(
                        request,
                        f"Refunds above {limit} need a second person of Finance: nothing is "
                        f"refunded yet. {approval_next_step(refund)}",
                        messages.WARNING,
                    )
                    return self._back(order)
                self.message_user(
                    request,
                    f"Refund of {format_amount(refund.amount, order.currency)} requested "
                    f"({refund.gateway_refund_id}). The order shows it once the provider's "
                    f"charge.refunded event is processed.",
                    messages.SUCCESS,
                )
                return self._back(order)
        return self._form_page(
            request,
            order,
            form,
            title=f"Refund order {order.pk}",
            intro=f"Paid {format_amount(order.amount, order.currency)}; "
            f"{format_amount(refundable, order.currency)} can still be refunded. "
            "The money goes back through the payment provider. A refund above "
            f"{format_amount(settings.APPROVAL_REFUND_MINOR, order.currency)} waits for a "
            "second person of Finance to approve it.",
        )

    def hold_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        order = self._action_order(request, object_id, self.has_hold_permission(request))
        form = HoldForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                services.order_delivery_hold(
                    order_id=order.pk,
                    reason=form.cleaned_data["reason"],
                    actor=Actor.of_user(request.user),
                )
            except ApplicationError as exc:
                _service_error_to_form(form, exc)
            else:
                self.message_user(
                    request, f"The delivery of order {order.pk} is held.", messages.SUCCESS
                )
                return self._back(order)
        return self._form_page(
            request,
            order,
            form,
            title=f"Hold the delivery of order {order.pk}",
            intro="No license or delivery is issued while the hold is on.",
        )

    @method_decorator(require_POST)
    def release_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        order = self._action_order(request, object_id, self.has_release_permission(request))
        self._release(request, order)
        return self._back(order)

    def _release(self, request: HttpRequest, order: Order) -> bool:
        if not order.delivery_hold:
            self.message_user(request, f"Order {order.pk}: nothing to release.", messages.INFO)
            return False
        try:
            order = services.order_delivery_release(
                order_id=order.pk, actor=Actor.of_user(request.user)
            )
        except ApplicationError as exc:
            self.message_user(request, exc.detail, messages.ERROR)
            return False
        state = order.delivery_state
        if state == "released":
            self.message_user(
                request,
                f"Order {order.pk}: the hold is lifted; delivery goes ahead.",
                messages.SUCCESS,
            )
        else:
            self.message_user(
                request,
                f"Order {order.pk}: the hold is lifted, but the delivery still waits "
                f"({DELIVERY_LABELS.get(state, state).lower()}).",
                messages.WARNING,
            )
        return True

    @method_decorator(require_POST)
    def replay_finance_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        order = self._action_order(request, object_id, self.has_replay_permission(request))
        self._replay_finance(request, order)
        return self._back(order)

    def _replay_finance(self, request: HttpRequest, order: Order) -> None:
        actor = Actor.of_user(request.user)
        pending = order.finance_postings.filter(status=PostingStatus.PENDING).order_by("pk")
        results = Counter(
            services.finance_posting_send(posting_pk=pk, actor=actor)
            for pk in pending.values_list("pk", flat=True)
        )
        report_postings(self, request, results, subject=f"Order {order.pk}")

    # --- Changelist actions ---

    @admin.action(description="Hold delivery of selected orders…", permissions=["hold"])
    def hold_selected(self, request: HttpRequest, queryset: QuerySet[Order]) -> HttpResponse | None:
        return reason_action(
            self,
            request,
            queryset,
            title="Hold the delivery of orders",
            apply=lambda order, reason: services.order_delivery_hold(
                order_id=order.pk, reason=reason, actor=Actor.of_user(request.user)
            ),
            done="{count} order(s) held.",
        )

    @admin.action(description="Release delivery of selected orders", permissions=["release"])
    def release_selected(self, request: HttpRequest, queryset: QuerySet[Order]) -> None:
        for order in queryset.order_by("pk"):
            self._release(request, order)

    @admin.action(description="Replay Finance for selected orders", permissions=["replay"])
    def replay_finance_selected(self, request: HttpRequest, queryset: QuerySet[Order]) -> None:
        actor = Actor.of_user(request.user)
        pending = FinancePosting.objects.filter(
            order__in=queryset, status=PostingStatus.PENDING
        ).order_by("pk")
        results = Counter(
            services.finance_posting_send(posting_pk=pk, actor=actor)
            for pk in pending.values_list("pk", flat=True)
        )
        report_postings(self, request, results, subject="Selected orders")
