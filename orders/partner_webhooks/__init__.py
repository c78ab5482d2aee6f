"""Signed webhooks to partners (Standard Webhooks): endpoints, messages, deliveries, attempts.

Partner webhooks belong to orders (DESIGN.md): the events are orders' (and payouts') and the
catalog's, which orders sits above. See docs/partner-webhooks.md.

- models.py: the rows (registered with the orders app from orders/models.py).
- signing.py: endpoint secrets, sealed under the key-store master key, and the headers.
- transport.py: the one HTTP send, with its SSRF guard (resolved address checked and pinned),
  no redirects, short timeouts and a bounded read.
- services.py: the writes (endpoints, rotation, emitting events, delivering, replay).
- tasks.py: thin Celery tasks (deliver one, the beat sweep).
"""
