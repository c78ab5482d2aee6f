"""Endpoint secrets and the Standard Webhooks headers.

A secret is `whsec_` and 32 random bytes in base64 (the Standard Webhooks form). It is stored
only sealed with AES-256-GCM under the key-store master key (marketplace.keystore.master_key,
the key that seals the platform's private keys), bound to its endpoint and slot by the
associated data, so a sealed secret copied to another endpoint's row does not open. The
plaintext is answered once, by the service that makes or rotates it.

The signature is made with the `standardwebhooks` reference library: `v1,<base64 HMAC-SHA256
of "<webhook-id>.<webhook-timestamp>.<body>">`; during a rotation's overlap both secrets sign
and the header carries both, space-separated, as the specification allows.
"""

import base64
import secrets
from datetime import datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from standardwebhooks.webhooks import Webhook

from marketplace.keystore import KeyStoreError, master_key

SECRET_PREFIX = "whsec_"  # noqa: S105 (the format's prefix, not a secret)
CURRENT = "current"
PREVIOUS = "previous"


def secret_generate() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _aad(endpoint_id: object, slot: str) -> bytes:
    return f"partner-webhook-secret:{endpoint_id}:{slot}".encode()


def secret_seal(secret: str, *, endpoint_id: object, slot: str = CURRENT) -> bytes:
    nonce = secrets.token_bytes(12)
    return nonce + AESGCM(master_key()).encrypt(nonce, secret.encode(), _aad(endpoint_id, slot))


def secret_unseal(sealed: bytes, *, endpoint_id: object, slot: str = CURRENT) -> str:
    sealed = bytes(sealed)
    try:
        plain = AESGCM(master_key()).decrypt(sealed[:12], sealed[12:], _aad(endpoint_id, slot))
    except InvalidTag:
        raise KeyStoreError(
            f"the webhook secret of endpoint {endpoint_id} cannot be unsealed: the key-store "
            "master key is not the one it was sealed with"
        ) from None
    return plain.decode()


def signature_header(
    *, secrets_in_use: list[str], webhook_id: str, timestamp: datetime, body: str
) -> str:
    """`webhook-signature`: one `v1,` signature per secret, space-separated."""
    return " ".join(Webhook(secret).sign(webhook_id, timestamp, body) for secret in secrets_in_use)
