"""Licensing in the admin, for Security and Support.

Every row is read-only: licenses, deliveries, their download log and proofs change only through
licensing.services, which check the rules and write the audit event. The admin offers those
services as actions, each allowed to the roles in marketplace.roles.LICENSING_ACTION_ROLES:

- licenses: search by license key (case, spaces and dashes forgiven), buyer email, order id or
  license id; **Revoke** (a reason is required) and **Reissue** (Security);
- deliveries: status, attempts, last error, downloads, package hash, key wrapping and the
  download log; **Regenerate** (Security and Support), refused for a refunded or disputed order;
- download log and proofs: read-only lists;
- signing keys: read-only, with **Rotate** and **Revoke** (Security), which file two-person
  approval requests.
"""

from licensing.admin import deliveries, licenses, proofs, signing_keys

__all__ = ["deliveries", "licenses", "proofs", "signing_keys"]
