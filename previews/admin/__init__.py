"""Previews in the admin.

Every row is read-only: material, sessions and pauses change only through previews.services,
which check the rules and write the audit events. The admin offers those services as a form and
actions, each allowed to the roles in marketplace.roles.PREVIEW_ACTION_ROLES:

- preview materials: upload a version (sample or sandbox; a .zip is expanded), **Withdraw**,
  and each SKU's preview page with **Switch on / off** (Content ops, Partner staff for their
  partner's SKUs);
- preview sessions: find by id, SKU or buyer; **Revoke** (Security, Support); **Isolate pool**
  (Security: one SKU at once, every SKU through the `previews.isolate_all` approval);
- preview pauses: in force or lifted; **Lift** (Security).
"""

from previews.admin import materials, pauses, sessions

__all__ = ["materials", "pauses", "sessions"]
