"""Client of the company's OpenID Connect provider: its metadata, its signing keys, and the
checks every JWT it signs must pass here (staff ID tokens, buyers' access tokens).

Metadata comes from discovery (`{MARKETPLACE_OIDC_ISSUER}/.well-known/openid-configuration`),
whose `issuer` must be the configured one exactly; it is kept for METADATA_SECONDS. The JWK Set
is kept for MARKETPLACE_OIDC_JWKS_MAX_AGE_SECONDS (a key the provider withdraws stops being
trusted within it) and fetched again sooner when a token names a key id it does not hold, at
most once per key id and REFETCH_BUDGET times a minute: a rotated key is followed at once, and
a stream of forged key ids cannot make us call the provider for each request.

A token passes only when: its `alg` is RS256 or ES256 (never `none`, never an HMAC, whatever
the key), the key its `kid` names is of that algorithm's type, the signature verifies, `iss`
and `aud` equal what is expected (for an ID token a single audience, or a list holding it
with `azp` naming the client), `exp` is in the future and `iat` (and `nbf`) not, with
LEEWAY_SECONDS either way. An access token (`kind="access"`) must also say it is one (`typ`
of MARKETPLACE_OIDC_API_TOKEN_TYPES, RFC 9068) and carry no `nonce`, so an ID token is never
taken for one. Each refusal is a `TokenRefused` with a code the callers show or log.
"""

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

import jwt
import requests
from django.conf import settings

logger = logging.getLogger(__name__)

ALGORITHMS = ("RS256", "ES256")
_KEY_TYPES = {"RS256": "RSA", "ES256": "EC"}
LEEWAY_SECONDS = 60
METADATA_SECONDS = 3600
# Fetches of the JWK Set that unknown key ids may cause, per window, per process.
REFETCH_BUDGET = 5
REFETCH_WINDOW_SECONDS = 60.0
# A kid the fetched keys did not hold is not fetched for again for this long (the newest
# UNKNOWN_KEPT of them are remembered).
UNKNOWN_SECONDS = 300.0
UNKNOWN_KEPT = 1024


class ProviderUnavailable(Exception):
    """The provider's metadata or keys could not be fetched, or made no sense."""


class TokenRefused(Exception):
    """A JWT that must not be trusted; `code` names why (shown to staff, in API problems)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str = ""
    end_session_endpoint: str = ""


def configured() -> bool:
    """Whether staff sign-in through the provider is configured."""
    return bool(settings.OIDC_ISSUER and settings.OIDC_CLIENT_ID)


def _get_json(url: str) -> dict[str, Any]:
    try:
        response = requests.get(url, timeout=settings.OIDC_TIMEOUT_SECONDS)
        response.raise_for_status()
        document = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise ProviderUnavailable(f"{url}: {exc}") from exc
    if not isinstance(document, dict):
        raise ProviderUnavailable(f"{url}: not a JSON object")
    return document


class _Provider:
    """What this process knows of one issuer: its metadata and its keys by key id."""

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer
        self._lock = threading.Lock()
        self._metadata: ProviderMetadata | None = None
        self._metadata_at = 0.0
        self._fetching = threading.Lock()
        self._keys: dict[str, jwt.PyJWK] = {}
        self._keys_at = -math.inf
        self._refetches: deque[float] = deque()
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self.jwks_fetches = 0

    def metadata(self) -> ProviderMetadata:
        with self._lock:
            if self._metadata is None or time.monotonic() - self._metadata_at > METADATA_SECONDS:
                self._metadata = self._discover()
                self._metadata_at = time.monotonic()
            return self._metadata

    def _discover(self) -> ProviderMetadata:
        document = _get_json(f"{self.issuer.rstrip('/')}/.well-known/openid-configuration")
        if document.get("issuer") != self.issuer:
            raise ProviderUnavailable(
                f"the provider's metadata names issuer {document.get('issuer')!r}, "
                f"not {self.issuer!r}"
            )
        try:
            return ProviderMetadata(
                issuer=self.issuer,
                authorization_endpoint=str(document["authorization_endpoint"]),
                token_endpoint=str(document["token_endpoint"]),
                jwks_uri=str(document["jwks_uri"]),
                userinfo_endpoint=str(document.get("userinfo_endpoint") or ""),
                end_session_endpoint=str(document.get("end_session_endpoint") or ""),
            )
        except KeyError as exc:
            raise ProviderUnavailable(f"the provider's metadata lacks {exc}") from None

    def key(self, kid: str) -> jwt.PyJWK | None:
        """The provider's key `kid`, from the kept JWK Set while it is younger than
        MARKETPLACE_OIDC_JWKS_MAX_AGE_SECONDS (so a key the provider withdrew stops being
        trusted), else fetched again; an unknown kid fetches it again only within the refetch
        budget. One fetch at a time: concurrent callers wait for it and read its result."""
        with self._fetching:
            with self._lock:
                now = time.monotonic()
                fresh = now - self._keys_at < settings.OIDC_JWKS_MAX_AGE_SECONDS
                if fresh and kid in self._keys:
                    return self._keys[kid]
                unknown_since = self._unknown.get(kid)
                if fresh and unknown_since is not None and now - unknown_since < UNKNOWN_SECONDS:
                    return None  # fetched for this kid already: at most once per kid
                if fresh and not self._refetch_allowed():
                    return None
            keys = self._fetch_keys()
            with self._lock:
                self._keys, self._keys_at = keys, time.monotonic()
                if kid not in keys:
                    self._unknown[kid] = self._keys_at
                    self._unknown.move_to_end(kid)
                    while len(self._unknown) > UNKNOWN_KEPT:
                        self._unknown.popitem(last=False)
                return keys.get(kid)

    def _refetch_allowed(self) -> bool:
        """At most REFETCH_BUDGET fetches for unknown kids per REFETCH_WINDOW_SECONDS: a new
        key is followed at once, while forged kids (each one new) cannot make us call the
        provider for every request."""
        now = time.monotonic()
        while self._refetches and now - self._refetches[0] > REFETCH_WINDOW_SECONDS:
            self._refetches.popleft()
        if len(self._refetches) >= REFETCH_BUDGET:
            return False
        self._refetches.append(now)
        return True

    def _fetch_keys(self) -> dict[str, jwt.PyJWK]:
        document = _get_json(self.metadata().jwks_uri)
        keys: dict[str, jwt.PyJWK] = {}
        for entry in document.get("keys") or []:
            usable = isinstance(entry, dict) and entry.get("use", "sig") == "sig"
            if not usable or not isinstance(entry.get("kid"), str):
                continue
            try:
                keys[entry["kid"]] = jwt.PyJWK(entry)
            except jwt.PyJWTError:
                logger.info("oidc: skipping a JWK the platform cannot use (kid %s)", entry["kid"])
        with self._lock:
            self.jwks_fetches += 1
        return keys


_providers: dict[str, _Provider] = {}
_providers_lock = threading.Lock()


def provider(issuer: str | None = None) -> _Provider:
    issuer = issuer or settings.OIDC_ISSUER
    with _providers_lock:
        if issuer not in _providers:
            _providers[issuer] = _Provider(issuer)
        return _providers[issuer]


def forget() -> None:
    """Drops what this process knows of every provider (tests, a changed configuration)."""
    with _providers_lock:
        _providers.clear()


def metadata() -> ProviderMetadata:
    return provider().metadata()


def verify(
    token: str,
    *,
    audience: str,
    nonce: str | None = None,
    client_id: str | None = None,
    kind: str = "id",
) -> dict[str, Any]:
    """The claims of `token` once every check above has passed; raises TokenRefused.
    `kind` is "id" (a staff ID token: `client_id` is ours) or "access" (a buyer's token for
    the API)."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise TokenRefused("malformed", "The token is not a well-formed JWT.") from None
    algorithm = header.get("alg")
    if algorithm not in ALGORITHMS:
        raise TokenRefused(
            "unsupported_algorithm",
            f"The token is signed with {algorithm!r}; only RS256 and ES256 are accepted.",
        )
    if kind == "access" and settings.OIDC_API_TOKEN_TYPES:
        typ = str(header.get("typ", "")).lower()
        if typ not in {t.lower() for t in settings.OIDC_API_TOKEN_TYPES}:
            raise TokenRefused(
                "not_an_access_token",
                f"The token's type is {typ or 'not given'!r}, not an access token.",
            )
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise TokenRefused("unknown_key", "The token names no signing key (kid).")
    key = provider().key(kid)
    if key is None:
        raise TokenRefused(
            "unknown_key", "The token is signed with a key the provider does not publish."
        )
    if key.key_type != _KEY_TYPES[algorithm] or key.algorithm_name != algorithm:
        raise TokenRefused("unsupported_algorithm", f"Key {kid} is not an {algorithm} key.")
    try:
        claims = jwt.decode(
            token,
            key.key,
            algorithms=[algorithm],
            audience=audience,
            issuer=settings.OIDC_ISSUER,
            leeway=LEEWAY_SECONDS,
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenRefused("expired", "The token has expired.") from None
    except jwt.ImmatureSignatureError:
        raise TokenRefused("not_yet_valid", "The token is not valid yet (iat or nbf).") from None
    except jwt.InvalidAudienceError:
        raise TokenRefused("wrong_audience", "The token is meant for another audience.") from None
    except jwt.InvalidIssuerError:
        raise TokenRefused("wrong_issuer", "The token comes from another issuer.") from None
    except jwt.InvalidSignatureError:
        raise TokenRefused("bad_signature", "The token's signature does not verify.") from None
    except jwt.MissingRequiredClaimError as exc:
        raise TokenRefused("missing_claim", f"The token lacks the {exc.claim!r} claim.") from None
    except jwt.PyJWTError as exc:
        raise TokenRefused("invalid", f"The token is invalid: {exc}.") from None
    if kind == "access":
        if "nonce" in claims:
            raise TokenRefused("not_an_access_token", "The token is an ID token (it has a nonce).")
    else:
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != (client_id or audience):
            raise TokenRefused(
                "wrong_audience", "The token has several audiences and no azp naming us."
            )
    if not isinstance(claims["sub"], str) or not claims["sub"]:
        raise TokenRefused("missing_claim", "The token's subject is empty.")
    if nonce is not None and claims.get("nonce") != nonce:
        raise TokenRefused("nonce_mismatch", "The token's nonce is not the one this sign-in sent.")
    return claims
