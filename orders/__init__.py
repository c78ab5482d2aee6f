"""Checkout, idempotency, payments, webhook events, finance ledger and royalties (to come)."""
