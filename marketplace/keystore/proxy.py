"""The proxy backend: an HTTP signing service that holds the keys (the API is in
marketplace.keystore's docstring)."""

import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import requests
from django.conf import settings

from marketplace.jwk import ALGORITHMS, b64url, b64url_decode, public_key_from_jwk
from marketplace.keystore.base import NewKey
from marketplace.keystore.errors import KeyStoreError, KeyStoreUnavailable
from marketplace.models import SigningKey, SigningKeyBackend

_proxy_sessions = threading.local()


class ProxyBackend:
    name = SigningKeyBackend.PROXY

    def __init__(self) -> None:
        endpoint = settings.SIGNING_ENDPOINT.rstrip("/")
        if not endpoint:
            raise KeyStoreError(
                "the key is held by the signing proxy but MARKETPLACE_SIGNING_ENDPOINT is not set"
            )
        self.endpoint = endpoint
        self.timeout = settings.KEYSTORE_TIMEOUT_SECONDS
        self.token = settings.SIGNING_TOKEN

    def _post(self, path: str, body: dict[str, Any], action: str) -> dict[str, Any]:
        # One session per thread (requests' sessions are not thread-safe): keeps connections.
        session = getattr(_proxy_sessions, "session", None)
        if session is None:
            session = _proxy_sessions.session = requests.Session()
        url = f"{self.endpoint}{path}"
        try:
            response = session.post(
                url,
                json=body,
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=(self.timeout, self.timeout),
            )
        except requests.RequestException as exc:
            raise KeyStoreUnavailable(f"the signing proxy at {url} is unreachable: {exc}") from exc
        status = response.status_code
        if status >= 500 or status == 429:
            raise KeyStoreUnavailable(f"the signing proxy failed {action} ({status})")
        if status in (401, 403):
            raise KeyStoreError(
                f"the signing proxy refused {action} ({status}): check MARKETPLACE_SIGNING_TOKEN"
            )
        if status >= 300:
            raise KeyStoreError(
                f"the signing proxy refused {action} ({status}): {response.text[:200]}"
            )
        try:
            document = response.json()
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise KeyStoreError(f"the signing proxy answered {action} with no JSON object")
        return document

    def create(self, *, kid: str, purpose: str) -> NewKey:
        document = self._post("/v1/keys", {"kid": kid, "purpose": purpose}, "making a key")
        key_ref, algorithm, jwk = (document.get(name) for name in ("key_ref", "alg", "public_jwk"))
        if not isinstance(key_ref, str) or not 0 < len(key_ref) <= 255:
            raise KeyStoreError("the signing proxy's new key has no usable key_ref")
        if algorithm not in ALGORITHMS or not isinstance(jwk, dict):
            raise KeyStoreError(
                f"the signing proxy's key {key_ref} is {algorithm!r}; EdDSA or ES256 with a "
                "public_jwk are supported"
            )
        try:
            public = public_key_from_jwk(jwk, kid)
        except ValueError as exc:
            raise KeyStoreError(f"the signing proxy's key {key_ref}: {exc}") from exc
        if public is None or public.algorithm != algorithm:
            raise KeyStoreError(f"the signing proxy's key {key_ref} is not an {algorithm} key")
        return NewKey(algorithm=algorithm, public_key=public.der(), backend_key_id=key_ref)

    def signing_function(self, key: SigningKey) -> Callable[[bytes], bytes]:
        path = f"/v1/keys/{quote(key.backend_key_id, safe='')}/sign"

        def sign(message: bytes) -> bytes:
            document = self._post(path, {"message": b64url(message)}, f"signing with {key.kid}")
            try:
                return b64url_decode(str(document["signature"]))
            except (KeyError, ValueError) as exc:
                raise KeyStoreError("the signing proxy answered with no signature") from exc

        return sign

    def discard(self, new: NewKey) -> None:
        pass  # the API has no deletion: an unused key there signs nothing of ours
