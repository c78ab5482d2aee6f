"""Orders in the admin, for Finance and Support.

Everything here is read-only as a row: orders, webhook events and Finance postings change only
through orders.services, which check the rules and write the audit event. The admin offers
those services as buttons and actions, each allowed to the roles in
marketplace.roles.ORDER_ACTION_ROLES (a 403 for anyone else):

- an order's page: Refund (full or partial), Hold delivery, Release delivery, Replay Finance,
  and its timeline from the audit log;
- webhook events with their attempts, and Replay for failed and dead-lettered ones;
- Finance postings (the outbox), Replay, and the reconciliation report;
- royalty lines, read-only (Partner staff see their own partner's only).
"""

from orders.admin import finance, orders, royalties, webhooks
from orders.partner_webhooks import admin as partner_webhooks

__all__ = ["finance", "orders", "partner_webhooks", "royalties", "webhooks"]
