"""The key store: the platform's own signing keys, whichever backend holds their private half.

Three backends (``MARKETPLACE_KEYSTORE_BACKEND``), all behind the same functions:

- ``local``: Ed25519 (JOSE ``EdDSA``) private keys in the database, sealed with AES-256-GCM
  under a master key: ``MARKETPLACE_KEYSTORE_MASTER_KEY`` (32 bytes, base64), or in
  development a key file created on first use in ``MARKETPLACE_DATA_DIR/keys`` (refused in
  production). A stolen database dump therefore holds no usable private key.
- ``kms``: ECDSA P-256 keys (JOSE ``ES256``) in AWS KMS (``ECC_NIST_P256``, ``SIGN_VERIFY``);
  the private key never leaves KMS. KMS signs with ``ECDSA_SHA_256`` and answers DER, which is
  turned into JOSE's ``r || s``. ``MARKETPLACE_LICENSE_SIGNER_KEY_ID`` names an existing key
  that becomes the active license key the first time one is needed.
- ``proxy``: an HTTP signing service at ``MARKETPLACE_SIGNING_ENDPOINT`` that holds the keys
  (EdDSA or ES256), speaking this API (bearer ``MARKETPLACE_SIGNING_TOKEN``, JSON bodies)::

      POST /v1/keys                 {"kid": str, "purpose": str}
          201 (or 200 for a kid it already made)
                                    {"key_ref": str, "alg": "EdDSA"|"ES256", "public_jwk": JWK}
      POST /v1/keys/{key_ref}/sign  {"message": base64url}
          200                       {"signature": base64url}   (JOSE form: ES256 is r || s)

  401/403: the token is refused; 404: no such key; 5xx, 429, a timeout or no connection:
  the service is unavailable (``KeyStoreUnavailable``, retry later).

Only license keys follow the setting; audit keys are always local, because the audit log must
go on checkpointing and exporting while a remote signer is down.

Every key's public half is kept in the database (DER), so publishing the JWK Set (RFC 7517,
RFC 8037) and verifying never call a backend; a signature a remote backend returns is checked
against it before it is used. The helpers that read a JWK Set and check a signature
(``marketplace.jwk``) touch neither the database nor the settings.

The key store writes no audit event: the audited lifecycle of a key (made on first use,
rotated, revoked) is ``audit.signing_keys``, which calls these functions inside the
transaction that records the event.
"""

from marketplace.keystore.errors import KeyStoreError, KeyStoreUnavailable
from marketplace.keystore.keys import (
    PreparedKey,
    Signer,
    jwk_of,
    jwks_of,
    key_active,
    key_mark_revoked,
    key_prepare,
    key_retire_active,
    keystore_backend,
    public_keys_from_store,
    signer_for,
)
from marketplace.keystore.kms import kms_client
from marketplace.keystore.local import master_key

__all__ = [
    "KeyStoreError",
    "KeyStoreUnavailable",
    "PreparedKey",
    "Signer",
    "jwk_of",
    "jwks_of",
    "key_active",
    "key_mark_revoked",
    "key_prepare",
    "key_retire_active",
    "keystore_backend",
    "kms_client",
    "master_key",
    "public_keys_from_store",
    "signer_for",
]
