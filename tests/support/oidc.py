"""A real OpenID Connect provider for the tests: the certified `oidc-provider` npm package in a
Node process on loopback (tests/support/oidc_provider/provider.mjs), with its own login page
(inputs `login` and `password`, a "Sign in" button), automatic consent, RP-initiated logout
that needs no click, and JWT access tokens for the API audience.

`oidc_provider` is a session fixture (one process per xdist worker) with the staff client
`marketplace-staff` and the default accounts of `DEFAULT_ACCOUNTS`, password `PASSWORD`.
Accounts, clients and keys changed by a test stay changed for the rest of the session: a
test that disables an account or drops a key should use an account or client of its own.

Key rotation rebuilds the provider inside the same process (oidc-provider reads its keys only
when constructed); sessions, grants, codes and tokens are kept, so a signed-in browser stays
signed in and `prompt=none` goes on working across a rotation.

The node modules come from `npm ci --prefix tests/support/oidc_provider --no-audit --no-fund`,
which `scripts/test` runs when they are missing.
"""

import atexit
import base64
import contextlib
import hashlib
import json
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import pytest
import requests

PROVIDER_DIR = Path(__file__).resolve().parent / "oidc_provider"
INSTALL_COMMAND = "npm ci --prefix tests/support/oidc_provider --no-audit --no-fund"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0

STAFF_CLIENT_ID = "marketplace-staff"
API_AUDIENCE = "https://api.marketplace.test"
TEST_CALLBACK = "http://testserver/oidc/callback/"
DEFAULT_SCOPE = "openid email profile groups"
PASSWORD = "pw"

DEFAULT_ACCOUNTS: dict[str, dict[str, Any]] = {
    "staff-ops": {
        "claims": {
            "email": "ops@example.com",
            "email_verified": True,
            "groups": ["marketplace-content-ops"],
        },
        "amr": ["pwd", "otp"],
    },
    "staff-nomfa": {
        "claims": {
            "email": "nomfa@example.com",
            "email_verified": True,
            "groups": ["marketplace-content-ops"],
        },
        "amr": ["pwd"],
    },
    "staff-norole": {
        "claims": {"email": "norole@example.com", "email_verified": True, "groups": []},
        "amr": ["pwd", "otp"],
    },
    "staff-unverified": {
        "claims": {
            "email": "unverified@example.com",
            "email_verified": False,
            "groups": ["marketplace-content-ops"],
        },
        "amr": ["pwd", "otp"],
    },
    "partner-staff": {
        "claims": {
            "email": "partner@example.com",
            "email_verified": True,
            "groups": ["marketplace-partner-staff"],
            "partner": "acme",
        },
        "amr": ["pwd", "otp"],
    },
    "buyer": {
        "claims": {"email": "buyer@example.com", "email_verified": True, "groups": []},
        "amr": ["pwd"],
    },
}

_LOGIN_FORM = re.compile(r'<form method="post" action="(/interaction/[^"]+/login)"')
_LOGOUT_FORM = re.compile(
    r'<form[^>]* action="([^"]+)"[^>]*>\s*<input type="hidden" name="xsrf" value="([^"]+)"'
)
_LOGIN_ERROR = re.compile(r'<p class="error" role="alert">([^<]*)</p>')


class OIDCError(Exception):
    """The provider answered an OAuth error (or an unexpected status)."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        self.error = body.get("error") if isinstance(body, dict) else None
        super().__init__(f"{status}: {body}")


@dataclass
class AuthorizationRequest:
    url: str
    state: str
    nonce: str
    code_verifier: str
    redirect_uri: str


@dataclass
class AuthorizationResponse:
    """What reached the redirect URI, and what the request was made with."""

    params: dict[str, str]
    state: str
    nonce: str
    code_verifier: str
    redirect_uri: str
    session: requests.Session = field(repr=False)

    @property
    def code(self) -> str:
        if "code" not in self.params:
            raise OIDCError(400, self.params)
        return self.params["code"]


def pkce_pair() -> tuple[str, str]:
    """A fresh (code_verifier, S256 code_challenge)."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class OIDCProvider:
    """One oidc-provider process. `start(config)` returns self once it answers."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.config: dict[str, Any] = {}
        self._issuer: str | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._stderr_path: Path | None = None
        self._control = requests.Session()

    # process

    def start(self, config: dict[str, Any]) -> "OIDCProvider":
        """Writes `config` as JSON for provider.mjs, starts node, and waits for its `listening`
        line. `control_token` is generated when absent."""
        if self.process is not None:
            raise RuntimeError("the provider is already started")
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not on PATH")
        self.config = {"port": 0, "signing_algs": ["RS256", "ES256"], **config}
        self.config.setdefault("control_token", secrets.token_urlsafe(24))
        self._dir = tempfile.TemporaryDirectory(prefix="oidc-provider-")
        directory = Path(self._dir.name)
        config_path = directory / "config.json"
        config_path.write_text(json.dumps(self.config))
        self._stderr_path = directory / "stderr.log"
        with self._stderr_path.open("wb") as stderr:
            # Its own session, so a Ctrl-C of pytest's process group does not reach it before
            # stop() does; its stdin is a pipe from us, and it exits when that closes, which is
            # how a pytest killed with SIGKILL still leaves no node process.
            self.process = subprocess.Popen(
                [
                    node,
                    str(PROVIDER_DIR / "provider.mjs"),
                    "--config",
                    str(config_path),
                    "--exit-with-stdin",
                ],
                cwd=PROVIDER_DIR,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                start_new_session=True,
            )
        atexit.register(self.stop)
        line = self._read_first_line(START_TIMEOUT)
        if not line.startswith("listening "):
            # An empty line is end of file: the process is exiting, if not yet gone.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=0 if line else 1)
            code = self.process.poll()
            stderr_text = self.stderr()
            self.stop()
            what = (
                f"exited with status {code} before listening"
                if code is not None
                else f"did not start within {START_TIMEOUT:.0f}s (first line {line!r})"
            )
            raise RuntimeError(f"oidc-provider {what}; its stderr:\n{stderr_text}")
        self._issuer = line.split(" ", 1)[1]
        self._control.headers["Authorization"] = f"Bearer {self.config['control_token']}"
        return self

    def _read_first_line(self, timeout: float) -> str:
        assert self.process is not None
        assert self.process.stdout is not None
        result: list[bytes] = []
        # readline() has no timeout of its own; a thread keeps a hung start from hanging us.
        reader = threading.Thread(
            target=lambda stream: result.append(stream.readline()),
            args=(self.process.stdout,),
            daemon=True,
        )
        reader.start()
        reader.join(timeout)
        return result[0].decode().strip() if result else ""

    def stop(self) -> None:
        """Terminates the process (by its own pid), kills it after STOP_TIMEOUT; idempotent."""
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    stream.close()
        atexit.unregister(self.stop)
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def stderr(self) -> str:
        """What the provider logged so far."""
        if self._stderr_path is None or not self._stderr_path.exists():
            return ""
        return self._stderr_path.read_text(errors="replace")

    # configuration

    @property
    def issuer(self) -> str:
        if self._issuer is None:
            raise RuntimeError("the provider is not started")
        return self._issuer

    @property
    def client(self) -> dict[str, Any]:
        return self.config["clients"][0]

    @property
    def client_id(self) -> str:
        return self.client["client_id"]

    @property
    def client_secret(self) -> str:
        return self.client["client_secret"]

    @property
    def api_audience(self) -> str:
        return self.config["api_audience"]

    def url(self, path: str) -> str:
        return f"{self.issuer}{path}"

    def discovery(self) -> dict[str, Any]:
        return self._get_json(self.url("/.well-known/openid-configuration"))

    def jwks(self) -> dict[str, Any]:
        return self._get_json(self.discovery()["jwks_uri"])

    # control API

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self._control.request(
            method, self.url(f"/__test__{path}"), json=body, timeout=10
        )
        if response.status_code != 200:
            raise OIDCError(response.status_code, _json_or_text(response))
        return response.json()

    def set_account(
        self,
        name: str,
        *,
        password: str = PASSWORD,
        claims: dict[str, Any],
        amr: Iterable[str] = ("pwd", "otp"),
        acr: str | None = None,
        disabled: bool = False,
    ) -> None:
        """Creates or replaces an account. A disabled one cannot sign in, and a session that
        names it answers `prompt=none` with login_required."""
        self._call(
            "PUT",
            f"/accounts/{name}",
            {
                "password": password,
                "claims": claims,
                "amr": list(amr),
                "acr": acr,
                "disabled": disabled,
            },
        )

    def set_client(
        self,
        client_id: str,
        *,
        client_secret: str | None = None,
        redirect_uris: Iterable[str],
        post_logout_redirect_uris: Iterable[str] = (),
        id_token_signed_response_alg: str = "RS256",  # noqa: S107 - not a password
        **metadata: Any,
    ) -> dict[str, Any]:
        """Creates or replaces a client (any other oidc-provider client metadata may be given)
        and returns its metadata. The provider is rebuilt; sessions are kept."""
        client = {
            "client_id": client_id,
            "client_secret": client_secret or secrets.token_urlsafe(24),
            "redirect_uris": list(redirect_uris),
            "post_logout_redirect_uris": list(post_logout_redirect_uris),
            "id_token_signed_response_alg": id_token_signed_response_alg,
            **metadata,
        }
        self._call("PUT", f"/clients/{client_id}", client)
        clients = [c for c in self.config["clients"] if c["client_id"] != client_id]
        if self.config["clients"] and self.config["clients"][0]["client_id"] == client_id:
            clients.insert(0, client)
        else:
            clients.append(client)
        self.config["clients"] = clients
        return client

    def allow_live_server(
        self,
        base_url: str,
        *,
        callback_path: str = "/oidc/callback/",
        post_logout_paths: Iterable[str] = ("/", "/admin/login/"),
    ) -> str:
        """Registers `base_url` + callback_path (and the post-logout paths) with the staff
        client, since oidc-provider only accepts exact redirect URIs. Returns the callback."""
        base = base_url.rstrip("/")
        client = self.client
        callback = base + callback_path
        self.set_client(
            client["client_id"],
            client_secret=client["client_secret"],
            redirect_uris=_union(client["redirect_uris"], [callback]),
            post_logout_redirect_uris=_union(
                client["post_logout_redirect_uris"], [base + path for path in post_logout_paths]
            ),
            id_token_signed_response_alg=client["id_token_signed_response_alg"],
        )
        return callback

    def rotate(self, alg: str = "RS256", *, drop_old: bool = False) -> str:
        """A new `alg` key signs from now on (it comes first in the JWKS); the old ones stay
        published unless `drop_old`. Returns the new kid. Sessions are kept."""
        return self._call("POST", "/rotate", {"alg": alg, "drop_old": drop_old})["kid"]

    def sign(
        self,
        payload: dict[str, Any],
        header: dict[str, Any] | None = None,
        key: str = "current",
    ) -> str:
        """A JWT signed with the current private key of header["alg"] (RS256 by default; kid
        and typ JWT added unless given), or with key="hs256-with-public" an HS256 token whose
        secret is the current RSA public key's PEM (the alg-confusion attack)."""
        body = {"header": header or {}, "payload": payload, "key": key}
        return self._call("POST", "/sign", body)["token"]

    def access_token(
        self,
        account: str,
        *,
        audience: str | None = None,
        scope: str = "openid email",
        expires_in: int | None = None,
    ) -> str:
        """A genuine oidc-provider JWT access token (typ at+jwt, RS256) for `account`, issued to
        the staff client for the API audience (or `audience`)."""
        body: dict[str, Any] = {"account": account, "scope": scope}
        if audience is not None:
            body["audience"] = audience
        if expires_in is not None:
            body["expires_in"] = expires_in
        return self._call("POST", "/access-token", body)["access_token"]

    def stats(self) -> dict[str, int]:
        """{"jwks_fetches": N, "token_requests": N} since the process started."""
        return self._call("GET", "/stats")

    # the flow, over plain HTTP

    def authorization_request(
        self,
        *,
        scope: str = DEFAULT_SCOPE,
        prompt: str | None = None,
        redirect_uri: str = TEST_CALLBACK,
        client_id: str | None = None,
        nonce: str | None = None,
        state: str | None = None,
        code_challenge: str | None = None,
        **extra: str,
    ) -> AuthorizationRequest:
        """A code-flow authorization URL with fresh state, nonce and PKCE (S256), for a browser
        to open; `code_challenge` overrides the one derived from `.code_verifier`."""
        verifier, challenge = pkce_pair()
        state = state or secrets.token_urlsafe(16)
        nonce = nonce or secrets.token_urlsafe(16)
        params = {
            "client_id": client_id or self.client_id,
            "response_type": "code",
            "scope": scope,
            "redirect_uri": redirect_uri,
            "state": state,
            "nonce": nonce,
            "code_challenge": code_challenge or challenge,
            "code_challenge_method": "S256",
            **({"prompt": prompt} if prompt else {}),
            **extra,
        }
        return AuthorizationRequest(
            url=f"{self.discovery()['authorization_endpoint']}?{urlencode(params)}",
            state=state,
            nonce=nonce,
            code_verifier=verifier,
            redirect_uri=redirect_uri,
        )

    def authorize(
        self,
        login: str | None = None,
        *,
        password: str = PASSWORD,
        session: requests.Session | None = None,
        **request: Any,
    ) -> AuthorizationResponse:
        """Drives an authorization request (`request` as for authorization_request) the way a
        browser would, signing in as `login` when the login page appears, and stops at the
        redirect to the redirect URI (nothing needs to listen there). Pass the `session` of an
        earlier call to reuse the provider session (silent renewal with prompt="none"). Error
        answers are in `.params` too; a login page that was not expected, or that refuses the
        password, raises OIDCError with the page's message."""
        session = session or requests.Session()
        auth = self.authorization_request(**request)
        params = follow_to_redirect(
            auth.url,
            redirect_uri=auth.redirect_uri,
            login=login,
            password=password,
            session=session,
        )
        return AuthorizationResponse(
            params=params,
            state=auth.state,
            nonce=auth.nonce,
            code_verifier=auth.code_verifier,
            redirect_uri=auth.redirect_uri,
            session=session,
        )

    def exchange_code(
        self,
        code: str,
        *,
        code_verifier: str,
        redirect_uri: str = TEST_CALLBACK,
        client_id: str | None = None,
        client_secret: str | None = None,
    ) -> dict[str, Any]:
        """The token endpoint's answer for `code`; OIDCError for an error answer."""
        return self._token_request(
            {
                "grant_type": "authorization_code",
                "code": code,
                "code_verifier": code_verifier,
                "redirect_uri": redirect_uri,
            },
            client_id=client_id,
            client_secret=client_secret,
        )

    def refresh(self, refresh_token: str, **client: str) -> dict[str, Any]:
        return self._token_request(
            {"grant_type": "refresh_token", "refresh_token": refresh_token}, **client
        )

    def end_session_url(
        self,
        *,
        id_token_hint: str | None = None,
        post_logout_redirect_uri: str | None = None,
        state: str | None = None,
    ) -> str:
        """The RP-initiated logout URL. Its page submits itself (logout=yes) in a browser."""
        params = {
            "id_token_hint": id_token_hint,
            "post_logout_redirect_uri": post_logout_redirect_uri,
            "state": state,
        }
        query = urlencode({k: v for k, v in params.items() if v is not None})
        return f"{self.discovery()['end_session_endpoint']}?{query}"

    def end_session(self, session: requests.Session, **params: str) -> str:
        """RP-initiated logout over HTTP in `session` (params as for end_session_url): submits
        the page's form as its script would, and returns where the provider redirects."""
        page = session.get(self.end_session_url(**params), timeout=10)
        form = _LOGOUT_FORM.search(page.text)
        if page.status_code != 200 or form is None:
            raise OIDCError(page.status_code, _json_or_text(page))
        action, xsrf = form.groups()
        done = session.post(
            urljoin(page.url, action),
            data={"xsrf": xsrf, "logout": "yes"},
            allow_redirects=False,
            timeout=10,
        )
        if not done.is_redirect:
            raise OIDCError(done.status_code, _json_or_text(done))
        return urljoin(done.url, done.headers["Location"])

    def code_flow_tokens(
        self,
        account: str,
        *,
        password: str = PASSWORD,
        scope: str = DEFAULT_SCOPE,
        nonce: str | None = None,
        session: requests.Session | None = None,
    ) -> dict[str, Any]:
        """The token response of a whole authorization-code flow with PKCE as `account`
        (id_token, access_token for the API, token_type, expires_in, scope)."""
        answer = self.authorize(
            account, password=password, scope=scope, nonce=nonce, session=session
        )
        return self.exchange_code(answer.code, code_verifier=answer.code_verifier)

    def _token_request(
        self,
        data: dict[str, str],
        *,
        client_id: str | None = None,
        client_secret: str | None = None,
    ) -> dict[str, Any]:
        auth = (client_id or self.client_id, client_secret or self.client_secret)
        response = requests.post(
            self.discovery()["token_endpoint"], data=data, auth=auth, timeout=10
        )
        if response.status_code != 200:
            raise OIDCError(response.status_code, _json_or_text(response))
        return response.json()

    def _get_json(self, url: str) -> dict[str, Any]:
        response = requests.get(url, timeout=10)
        response.raise_for_status()
        return response.json()


def follow_to_redirect(
    url: str,
    *,
    redirect_uri: str,
    login: str | None = None,
    password: str = PASSWORD,
    session: requests.Session | None = None,
) -> dict[str, str]:
    """Follows `url` (an authorization URL, whoever built it: the app under test too) the way a
    browser would, signing in on the provider's login page as `login` if it appears, up to the
    redirect to `redirect_uri`; returns that redirect's query. A login page that was not
    expected, or that refuses the password, raises OIDCError with the page's message."""
    session = session or requests.Session()
    response = session.get(url, allow_redirects=False, timeout=10)
    signed_in = False
    for _ in range(20):
        if response.is_redirect:
            location = urljoin(response.url, response.headers["Location"])
            if _same_endpoint(location, redirect_uri):
                return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
            response = session.get(location, allow_redirects=False, timeout=10)
            continue
        form = _LOGIN_FORM.search(response.text)
        if form is None or login is None or signed_in:
            error = _LOGIN_ERROR.search(response.text)
            raise OIDCError(
                response.status_code, error.group(1) if error else _json_or_text(response)
            )
        response = session.post(
            urljoin(response.url, form.group(1)),
            data={"login": login, "password": password},
            allow_redirects=False,
            timeout=10,
        )
        signed_in = True
    raise OIDCError(response.status_code, "too many redirects")


def _json_or_text(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _same_endpoint(location: str, redirect_uri: str) -> bool:
    parts, expected = urlsplit(location), urlsplit(redirect_uri)
    return (parts.scheme, parts.netloc, parts.path) == (
        expected.scheme,
        expected.netloc,
        expected.path,
    )


def _union(first: Iterable[str], second: Iterable[str]) -> list[str]:
    return list(dict.fromkeys([*first, *second]))


def default_config() -> dict[str, Any]:
    """The fixture's configuration: the staff client and DEFAULT_ACCOUNTS."""
    return {
        "clients": [
            {
                "client_id": STAFF_CLIENT_ID,
                "client_secret": secrets.token_urlsafe(24),
                "redirect_uris": [TEST_CALLBACK],
                "post_logout_redirect_uris": [
                    "http://testserver/",
                    "http://testserver/admin/login/",
                ],
                "id_token_signed_response_alg": "RS256",
            }
        ],
        "api_audience": API_AUDIENCE,
        "accounts": {
            name: {"password": PASSWORD, **account} for name, account in DEFAULT_ACCOUNTS.items()
        },
        "signing_algs": ["RS256", "ES256"],
    }


def skip_reason() -> str | None:
    """Why the provider cannot run here, or None."""
    if shutil.which("node") is None:
        return "the OpenID Connect provider needs Node.js (`node` is not on PATH)"
    if not (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
        return (
            f"the OpenID Connect provider's node modules are not installed: run `{INSTALL_COMMAND}`"
        )
    return None


@pytest.fixture(scope="session")
def oidc_provider() -> Iterator[OIDCProvider]:
    """A started provider (one per xdist worker): see the module's docstring."""
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    provider = OIDCProvider().start(default_config())
    try:
        yield provider
    finally:
        provider.stop()
