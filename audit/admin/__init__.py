"""The audit log in the admin: events, checkpoints and exports, read-only for everyone
(superusers included), with a page that verifies the chain and a button that signs a checkpoint.
The signing keys' admin is licensing's (licensing.admin.signing_keys).

The event table grows to millions of rows, so every query the changelist makes is one an index
answers: filters and search match whole values of indexed columns, the lists of distinct values
are read with a loose index scan, the page count of the unfiltered list is the last sequence
(the chain is gapless from 1) rather than COUNT(*), and the users behind the actors of a page are
fetched in one query.
"""

from audit.admin import events, kernel, records

__all__ = ["events", "kernel", "records"]
