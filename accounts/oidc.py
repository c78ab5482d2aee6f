"""Staff sign-in through the company's OpenID Connect provider, on mozilla-django-oidc.

The library runs the authorization-code flow (state, nonce, PKCE S256) and the silent renewal;
what it leaves to its users is done here:
- the ID token is checked by `marketplace.oidc.verify` (RS256/ES256 only, exact `iss` and `aud`,
  `exp`/`iat` with a small leeway, the nonce), not by the library's own checks;
- a person is matched on (issuer, subject) through `Identity`, never on e-mail alone: an e-mail
  changed at the provider follows the same account, and an account here that merely shares an
  address is not taken over;
- `email_verified` is required, and with MARKETPLACE_OIDC_REQUIRE_MFA a second factor in `amr`
  (or an `acr` from MARKETPLACE_OIDC_MFA_ACR);
- roles come from the roles claim through MARKETPLACE_OIDC_ROLE_MAP, set at every sign-in and
  every renewal; claims that map to no role refuse the sign-in and create nobody;
- every sign-in, refusal (with its reason), role change and sign-out is audited.

Endpoints come from the provider's metadata, fetched when first needed (not at start-up, so a
provider that is down does not stop the platform from starting).
"""

import logging
import re
import time
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib import auth
from django.contrib.auth.models import Group
from django.core.exceptions import SuspiciousOperation
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.functional import lazy
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.middleware import SessionRefresh
from mozilla_django_oidc.utils import import_from_settings
from mozilla_django_oidc.views import (
    OIDCAuthenticationCallbackView,
    OIDCAuthenticationRequestView,
    OIDCLogoutView,
)
from requests import RequestException

from accounts.models import Identity
from audit.services import audit_append
from marketplace import oidc
from marketplace.actors import Actor
from marketplace.clients import client_ip
from marketplace.middleware import outage_answer
from marketplace.models import User
from marketplace.roles import PARTNER_STAFF, ROLE_NAMES

logger = logging.getLogger(__name__)

# Where a staff session keeps when it signed in (the absolute lifetime counts from it).
SIGNED_IN_AT = "staff_signed_in_at"
# When the session last made a request, to the minute (the idle timeout counts from it).
LAST_SEEN = "staff_last_seen"
LAST_SEEN_STEP_SECONDS = 60
# Where staff sessions are used (config/urls.py mounts the admin there).
ADMIN_PREFIX = "/admin/"


class LoginRefused(Exception):
    def __init__(self, code: str, reason: str, *, subject: str = "") -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.subject = subject


def _endpoint(name: str) -> Any:
    return lazy(lambda: getattr(oidc.metadata(), name), str)()


def oidc_setting(attr: str, *default: Any) -> Any:
    """The library's settings, from ours: the client, and the endpoints from discovery."""
    values = {
        "OIDC_RP_CLIENT_ID": settings.OIDC_CLIENT_ID,
        "OIDC_RP_CLIENT_SECRET": settings.OIDC_CLIENT_SECRET,
        "OIDC_OP_AUTHORIZATION_ENDPOINT": _endpoint("authorization_endpoint"),
        "OIDC_OP_TOKEN_ENDPOINT": _endpoint("token_endpoint"),
        "OIDC_OP_USER_ENDPOINT": _endpoint("userinfo_endpoint"),
        "OIDC_OP_JWKS_ENDPOINT": _endpoint("jwks_uri"),
        "OIDC_RP_SIGN_ALGO": "RS256",
        "OIDC_RP_SCOPES": settings.OIDC_SCOPES,
        "OIDC_USE_PKCE": True,
        "OIDC_PKCE_CODE_CHALLENGE_METHOD": "S256",
        "OIDC_USE_NONCE": True,
        "OIDC_STORE_ID_TOKEN": True,
        "OIDC_TIMEOUT": settings.OIDC_TIMEOUT_SECONDS,
        "OIDC_RENEW_ID_TOKEN_EXPIRY_SECONDS": settings.OIDC_RENEW_SECONDS,
        "OIDC_CREATE_USER": True,
        "OIDC_OP_LOGOUT_URL_METHOD": "accounts.oidc.provider_logout_url",
        "LOGIN_REDIRECT_URL": "admin:index",
        "LOGOUT_REDIRECT_URL": "admin:login",
    }
    if attr in values:
        return values[attr]
    return import_from_settings(attr, *default)


def roles_of(claims: dict[str, Any]) -> list[str]:
    """The platform roles the provider's groups map to, sorted; unknown groups are ignored."""
    groups = claims.get(settings.OIDC_ROLES_CLAIM) or []
    if isinstance(groups, str):
        groups = [groups]
    if not isinstance(groups, list):
        return []
    mapped = {settings.OIDC_ROLE_MAP.get(str(group)) for group in groups}
    return sorted(role for role in mapped if role in ROLE_NAMES)


_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_SLUG = re.compile(r"[-a-zA-Z0-9_]{1,64}")


def _has_second_factor(claims: dict[str, Any]) -> bool:
    amr = claims.get("amr") or []
    if isinstance(amr, list) and set(map(str, amr)) & set(settings.OIDC_MFA_AMR):
        return True
    return bool(settings.OIDC_MFA_ACR) and str(claims.get("acr", "")) in settings.OIDC_MFA_ACR


def claims_check(claims: dict[str, Any]) -> list[str]:
    """The roles of a sign-in whose claims pass, or LoginRefused saying why not."""
    subject = str(claims.get("sub", ""))[:255]
    email = claims.get("email")
    if not email:
        raise LoginRefused("no_email", "The provider sent no e-mail address.", subject=subject)
    partner = claims.get(settings.OIDC_PARTNER_CLAIM) if settings.OIDC_PARTNER_CLAIM else None
    if (
        len(str(claims.get("sub", ""))) > 255
        or not isinstance(email, str)
        or len(email) > 254
        or not _EMAIL.fullmatch(email.strip())
        or (partner is not None and not (isinstance(partner, str) and _SLUG.fullmatch(partner)))
    ):
        raise LoginRefused(
            "invalid_claims",
            "The provider's claims do not fit here (subject, e-mail address or partner).",
            subject=subject,
        )
    if claims.get("email_verified") is not True:
        raise LoginRefused(
            "email_unverified",
            "Your e-mail address is not verified at the identity provider.",
            subject=subject,
        )
    if settings.OIDC_REQUIRE_MFA and not _has_second_factor(claims):
        raise LoginRefused(
            "mfa_required",
            "This sign-in did not use a second factor; sign in again with multi-factor "
            "authentication.",
            subject=subject,
        )
    roles = roles_of(claims)
    if not roles:
        raise LoginRefused(
            "no_role",
            "Your account at the identity provider holds no role on the marketplace; ask "
            "for one there.",
            subject=subject,
        )
    if PARTNER_STAFF in roles and not _partner_of(claims):
        raise LoginRefused(
            "no_partner",
            "Partner staff must be bound to a partner by the provider; yours names none.",
            subject=subject,
        )
    return roles


def _partner_of(claims: dict[str, Any]) -> str:
    if not settings.OIDC_PARTNER_CLAIM:
        return ""
    value = claims.get(settings.OIDC_PARTNER_CLAIM)
    return value.strip() if isinstance(value, str) else ""


def _audit_refusal(request: HttpRequest | None, refusal: LoginRefused) -> None:
    with transaction.atomic():
        audit_append(
            actor=Actor.service("identity-provider"),
            action="staff.login_refused",
            subject=("identity", f"{settings.OIDC_ISSUER}#{refusal.subject}"),
            data={
                "code": refusal.code,
                "reason": refusal.reason,
                "client_ip": client_ip(request) if request is not None else None,
            },
        )


def staff_sign_in(*, claims: dict[str, Any], request: HttpRequest | None) -> User:
    """The staff account of a verified ID token's claims, created or brought up to date (e-mail,
    roles, partner), with `staff.login` (and `staff.roles_changed` when the roles moved).
    Raises LoginRefused, after recording `staff.login_refused` (which outlives the rolled-back
    sign-in), when the claims do not pass."""
    try:
        for attempt in range(2):
            try:
                with transaction.atomic():
                    return _staff_sign_in(claims, request)
            except IntegrityError:
                # The same person's first sign-in in another tab made the account meanwhile:
                # the second pass finds it.
                if attempt:
                    raise
        raise AssertionError("unreachable")
    except LoginRefused as refusal:
        _audit_refusal(request, refusal)
        if refusal.code in ("no_role", "no_partner"):
            # The provider says this person holds no role here (any more): the account keeps
            # none either, whether or not a session of it is still open somewhere.
            _roles_withdraw(subject=str(claims.get("sub", "")))
        raise


def _roles_withdraw(*, subject: str) -> None:
    with transaction.atomic():
        identity = (
            Identity.objects.select_for_update()
            .select_related("user")
            .filter(issuer=settings.OIDC_ISSUER, subject=subject)
            .first()
        )
        if identity is None:
            return
        user = identity.user
        before = sorted(user.groups.filter(name__in=ROLE_NAMES).values_list("name", flat=True))
        identity.roles, identity.partner_slug = [], ""
        identity.save(update_fields=["roles", "partner_slug"])
        if not before:
            return
        user.groups.remove(*user.groups.filter(name__in=ROLE_NAMES))
        audit_append(
            actor=Actor.service("identity-provider"),
            action="staff.roles_changed",
            subject=("user", str(user.uuid)),
            data={"added": [], "removed": before, "partner": None},
        )


def _staff_sign_in(claims: dict[str, Any], request: HttpRequest | None) -> User:
    roles = claims_check(claims)
    issuer, subject = settings.OIDC_ISSUER, str(claims["sub"])
    email = str(claims["email"]).strip()
    identity = (
        Identity.objects.select_for_update()
        .select_related("user")
        .filter(issuer=issuer, subject=subject)
        .first()
    )
    created = identity is None
    if identity is None:
        if User.objects.filter(email__iexact=email).exists():
            raise LoginRefused(
                "email_in_use",
                "An account with your e-mail address exists here but is not linked to your "
                "identity at the provider; an operator must link it.",
                subject=subject,
            )
        user = User.objects.create_user(email=email, is_staff=True)
        identity = Identity.objects.create(user=user, issuer=issuer, subject=subject, email=email)
    user = identity.user
    if not user.is_active:
        raise LoginRefused(
            "account_disabled", "This account is disabled on the marketplace.", subject=subject
        )
    before = sorted(user.groups.filter(name__in=ROLE_NAMES).values_list("name", flat=True))
    changed_fields = []
    if (
        user.email != email
        and not User.objects.filter(email__iexact=email).exclude(pk=user.pk).exists()
    ):
        user.email = email
        changed_fields.append("email")
    if not user.is_staff:
        user.is_staff = True
        changed_fields.append("is_staff")
    if changed_fields:
        user.save(update_fields=changed_fields)
    if before != roles:
        kept = user.groups.exclude(name__in=ROLE_NAMES)
        user.groups.set([*kept, *Group.objects.filter(name__in=roles)])
    partner = _partner_of(claims) if PARTNER_STAFF in roles else ""
    identity.email = email
    identity.roles = roles
    identity.partner_slug = partner
    identity.last_login_at = timezone.now()
    identity.save(update_fields=["email", "roles", "partner_slug", "last_login_at"])
    actor = Actor.of_user(user)
    subject_ref = ("user", str(user.uuid))
    if before != roles:
        audit_append(
            actor=Actor.service("identity-provider"),
            action="staff.roles_changed",
            subject=subject_ref,
            data={
                "added": sorted(set(roles) - set(before)),
                "removed": sorted(set(before) - set(roles)),
                "partner": partner or None,
            },
        )
    audit_append(
        actor=actor,
        action="staff.login",
        subject=subject_ref,
        data={
            "method": "oidc",
            "new_account": created,
            "amr": [str(v) for v in claims.get("amr") or []],
            "client_ip": client_ip(request) if request is not None else None,
        },
    )
    return user


class StaffOIDCBackend(OIDCAuthenticationBackend):
    """The library's backend with our checks of the token and the claims."""

    get_settings = staticmethod(oidc_setting)

    def authenticate(self, request: HttpRequest | None, **kwargs: Any) -> User | None:
        # Django asks every backend with whatever credentials a caller has (the admin's
        # password form, say); the library's would then redeem a `code` from the query string
        # with no state, nonce or PKCE behind it. Only the callback, after checking its state,
        # passes a nonce.
        if (
            request is None
            or not kwargs.get("nonce")
            or "username" in kwargs
            or "password" in kwargs
            or getattr(request.resolver_match, "url_name", None) != "oidc_authentication_callback"
        ):
            return None
        return super().authenticate(request, **kwargs)

    def verify_token(self, token: str, **kwargs: Any) -> dict[str, Any]:
        try:
            return oidc.verify(
                token,
                audience=settings.OIDC_CLIENT_ID,
                nonce=kwargs.get("nonce"),
                client_id=settings.OIDC_CLIENT_ID,
            )
        except oidc.TokenRefused as exc:
            refusal = LoginRefused(exc.code, f"The provider's ID token was refused: {exc.reason}")
            _audit_refusal(self.request, refusal)
            raise refusal from None

    def get_userinfo(
        self, access_token: str, id_token: str, payload: dict[str, Any]
    ) -> dict[str, Any]:
        # The verified ID token is what we trust; the userinfo endpoint only adds claims the
        # token left out (the roles claim, with some providers), for the same subject.
        if settings.OIDC_ROLES_CLAIM in payload or not oidc.metadata().userinfo_endpoint:
            return payload
        extra = super().get_userinfo(access_token, id_token, payload)
        if extra.get("sub") != payload.get("sub"):
            refusal = LoginRefused(
                "subject_mismatch", "The provider's userinfo names someone else."
            )
            _audit_refusal(self.request, refusal)
            raise refusal
        return {**extra, **payload}

    def get_or_create_user(
        self, access_token: str, id_token: str, payload: dict[str, Any]
    ) -> User | None:
        claims = self.get_userinfo(access_token, id_token, payload)
        return staff_sign_in(claims=claims, request=self.request)

    def get_user(self, user_id: Any) -> User | None:
        user = super().get_user(user_id)
        return user if user is not None and user.is_active else None


def _refused(request: HttpRequest, code: str, reason: str, status: int = 403) -> HttpResponse:
    return render(
        request,
        "accounts/login_refused.html",
        {"code": code, "reason": reason, "title": "Sign-in refused"},
        status=status,
    )


class StaffLoginView(OIDCAuthenticationRequestView):
    get_settings = staticmethod(oidc_setting)

    def get(self, request: HttpRequest) -> HttpResponse:
        if not oidc.configured():
            return _refused(
                request,
                "not_configured",
                "Sign-in through the identity provider is not configured.",
                404,
            )
        try:
            return super().get(request)
        except oidc.ProviderUnavailable as exc:
            logger.warning("oidc: the provider is unavailable: %s", exc)
            return _refused(
                request,
                "provider_unavailable",
                "The identity provider cannot be reached; try again in a moment.",
                503,
            )


STATE_MISMATCH = ("state_mismatch", "This sign-in's state is unknown or was already used.")


def _provider_error(error: str) -> str:
    """The provider's error code (RFC 6749's are lower case with underscores), or a stand-in."""
    return error if re.fullmatch(r"[a-z_]{1,64}", error) else "provider_error"


class StaffCallbackView(OIDCAuthenticationCallbackView):
    get_settings = staticmethod(oidc_setting)

    def get(self, request: HttpRequest) -> HttpResponse:
        # Whether this answers a sign-in (or renewal) this session started: only then may a
        # failure end the session; a link anyone can send must not sign anyone out.
        self.state_known = request.GET.get("state") in request.session.get("oidc_states", {})
        error = request.GET.get("error")
        if error:
            if not self.state_known:
                # Not the answer to a sign-in this session started (a forged link): shown, and
                # it changes nothing, least of all the session it was sent to.
                return _refused(request, *STATE_MISMATCH)
            if request.user.is_authenticated:
                # A renewal the provider refused (the account disabled or signed out there):
                # the library signs the session out; it is recorded here first.
                self._end_session(request, reason=_provider_error(error))
        try:
            return super().get(request)
        except SuspiciousOperation:
            # An unknown or used state: nothing to do with this session, which stays as it is.
            return _refused(request, *STATE_MISMATCH)
        except LoginRefused as exc:  # audited where it was raised
            refusal = exc
        except (RequestException, oidc.ProviderUnavailable) as exc:
            # The code was refused (replayed, expired) or the provider did not answer.
            logger.warning("oidc: the token exchange failed: %s", exc)
            refusal = LoginRefused(
                "code_rejected", "The provider did not accept this sign-in; start again."
            )
            _audit_refusal(request, refusal)
        if request.user.is_authenticated:
            self._end_session(request)
        return _refused(request, refusal.code, refusal.reason)

    def login_failure(self) -> HttpResponse:
        request = self.request
        error = request.GET.get("error", "")
        if request.user.is_authenticated and self.state_known:
            # A renewal that failed (the account disabled at the provider, the session there
            # ended, the roles gone): access ends here too.
            self._end_session(
                request, reason=_provider_error(error) if error else "renewal_refused"
            )
        if error:
            # The provider's own description is not shown: anyone can put text in a link.
            code = _provider_error(error)
            return _refused(request, code, f"The identity provider refused the sign-in ({code}).")
        return _refused(request, "login_failed", "The sign-in did not complete; start again.")

    @staticmethod
    def _end_session(request: HttpRequest, reason: str = "") -> None:
        user = request.user
        with transaction.atomic():
            audit_append(
                actor=Actor.service("identity-provider"),
                action="staff.logout",
                subject=("user", str(user.uuid)),
                data={"reason": reason or "refused"},
            )
            auth.logout(request)


class StaffLogoutView(OIDCLogoutView):
    """POST: ends the session here, audited, then at the provider (RP-initiated logout)."""

    get_settings = staticmethod(oidc_setting)

    def post(self, request: HttpRequest) -> HttpResponse:
        if request.user.is_authenticated:
            with transaction.atomic():
                audit_append(
                    actor=Actor.of_user(request.user),
                    action="staff.logout",
                    subject=("user", str(request.user.uuid)),
                    data={"reason": "signed_out"},
                )
        return super().post(request)


def provider_logout_url(request: HttpRequest) -> str:
    """The provider's end-session URL with this session's ID token, back to the admin's login."""
    from urllib.parse import urlencode

    from django.urls import reverse

    try:
        endpoint = oidc.metadata().end_session_endpoint
    except oidc.ProviderUnavailable:
        endpoint = ""
    back = request.build_absolute_uri(reverse("admin:login"))
    if not endpoint or "oidc_id_token" not in request.session:
        return back
    query = urlencode(
        {
            "id_token_hint": request.session["oidc_id_token"],
            "post_logout_redirect_uri": back,
            "client_id": settings.OIDC_CLIENT_ID,
        }
    )
    return f"{endpoint}?{query}"


class StaffSessionRenewal(SessionRefresh):
    """Silent renewal (`prompt=none`) every MARKETPLACE_OIDC_RENEW_SECONDS, and the staff
    session's limits: MARKETPLACE_STAFF_SESSION_HOURS from sign-in whatever the renewals said,
    and MARKETPLACE_STAFF_SESSION_IDLE_MINUTES without a request; past either it ends here."""

    get_settings = staticmethod(oidc_setting)

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if oidc.configured() and request.path.startswith(ADMIN_PREFIX):
            # The admin's sign-out form posts here and is redirected on to the provider's
            # logout: browsers hold a form's redirects to the page's form-action too.
            origin = "{0.scheme}://{0.netloc}".format(urlsplit(settings.OIDC_ISSUER))
            update = dict(getattr(response, "_csp_update", None) or {})
            update["form-action"] = [*update.get("form-action", []), origin]
            response._csp_update = update  # type: ignore[attr-defined]
        return response

    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        if settings.SESSION_COOKIE_NAME not in request.COOKIES or not request.path.startswith(
            ADMIN_PREFIX
        ):
            # Staff sessions are used by the admin alone: elsewhere (the API's bearer requests,
            # the landing page) the session is not even read, so the answer neither loads one
            # nor varies on Cookie.
            return None
        try:
            return self._renew(request)
        except Exception as exc:
            # The session, the user or the audit log may be what is down: the admin's plain
            # 503 page, as a view would get (marketplace.middleware).
            answer = outage_answer(request, exc)
            if answer is None:
                raise
            return answer

    def _renew(self, request: HttpRequest) -> HttpResponse | None:
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated or not user.is_staff:
            return None
        signed_in_at = request.session.get(SIGNED_IN_AT)
        if signed_in_at is None:
            # A session from before the stamp (signed_in, below) was kept: it starts now.
            request.session[SIGNED_IN_AT] = signed_in_at = time.time()
        now = time.time()
        last_seen = request.session.get(LAST_SEEN, signed_in_at)
        ended = (
            "session_lifetime"
            if now - signed_in_at > settings.STAFF_SESSION_SECONDS
            else "idle"
            if now - last_seen > settings.STAFF_SESSION_IDLE_SECONDS
            else ""
        )
        if ended:
            with transaction.atomic():
                audit_append(
                    actor=Actor.of_user(user),
                    action="staff.logout",
                    subject=("user", str(user.uuid)),
                    data={"reason": ended},
                )
                auth.logout(request)
            return None
        if now - last_seen > LAST_SEEN_STEP_SECONDS:
            # Written at most once a minute: the idle timeout needs no finer step.
            request.session[LAST_SEEN] = now
        if not oidc.configured():
            return None
        # The library reads these once, when the middleware is built; here, at each renewal.
        self.OIDC_RP_CLIENT_ID, self.OIDC_RP_SCOPES = settings.OIDC_CLIENT_ID, settings.OIDC_SCOPES
        try:
            return super().process_request(request)
        except oidc.ProviderUnavailable as exc:
            # The provider is down: the session goes on until it is back or the lifetime ends.
            logger.warning("oidc: renewal skipped, the provider is unavailable: %s", exc)
            return None


def signed_in(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    """Django's user_logged_in, for every way in (the provider, a break-glass password, the
    dev password): the session's absolute lifetime starts at sign-in, not at a renewal."""
    if request is not None and hasattr(request, "session"):
        request.session[SIGNED_IN_AT] = request.session[LAST_SEEN] = time.time()
