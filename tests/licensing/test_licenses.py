"""Licenses (licensing.services.licenses): issued once per order, signed with the active
license key, verified (signature, expiry, revocation) by the platform and, offline, by an
independent JOSE library against the published JWK Set; revoked and reissued, audited."""

import json
import re
import threading
from datetime import timedelta

import jwt
import pytest
from django.db import connection

from audit.models import AuditEvent
from audit.signing_keys import signing_key_active, signing_key_revoke
from licensing.jws import LICENSE_TOKEN, jws_parse
from licensing.models import License, LicenseStatus
from licensing.services import (
    license_issue,
    license_reissue,
    license_revoke,
    license_verify,
    order_fulfil,
)
from licensing.services.fulfilment import LICENSING_WORKER
from licensing.services.licenses import PERPETUAL_EXP, license_key_normalize
from marketplace.exceptions import Conflict, InvalidInput
from marketplace.jwk import b64url, b64url_decode
from marketplace.keystore import signer_for
from marketplace.models import SigningKey, SigningKeyPurpose, SigningKeyStatus
from tests.catalog.factories import TEST_ACTOR
from tests.licensing.factories import (
    order_licensed,
    order_paid,
    order_refunded,
    order_revoked,
)
from tests.orders.factories import order_checked_out, sku_for_sale
from tests.support.approvals import rotated

pytestmark = [
    pytest.mark.django_db,
    # RFC 9864 names Ed25519 "Ed25519"; the platform publishes the long-standing "EdDSA".
    pytest.mark.filterwarnings("ignore:EdDSA is deprecated"),
]

KEY_FORMAT = re.compile(r"^MKP(-[0-9A-HJKMNP-TV-Z]{5}){4}$")


def audit_actions(subject: License) -> list[str]:
    return list(
        AuditEvent.objects.filter(subject_type="license", subject_id=str(subject.pk))
        .order_by("id")
        .values_list("action", flat=True)
    )


def jwks(client) -> dict:
    response = client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    return response.json()


def pyjwt_claims(token: str, document: dict) -> dict:
    """As a licensee's code would check it: the key the token's kid names, from the JWK Set
    alone, only the algorithms the platform signs with, and a license's iss and aud
    (test_token_confusion.py runs the documented check itself)."""
    kid = jwt.get_unverified_header(token)["kid"]
    key = jwt.PyJWKSet.from_dict(document)[kid]
    return jwt.decode(
        token,
        key=key,
        algorithms=["EdDSA", "ES256"],
        issuer="marketplace:licensing",
        audience="marketplace:license",
        options={"require": ["iss", "aud", "exp", "jti"]},
    )


def forged(token: str, **changes) -> str:
    """The token with its payload changed and the original signature kept."""
    header, payload, signature = token.split(".")
    claims = {**json.loads(b64url_decode(payload)), **changes}
    return f"{header}.{b64url(json.dumps(claims).encode())}.{signature}"


# --- Issuing -----------------------------------------------------------------------------------


def test_license_carries_the_order_sku_buyer_terms_and_kid(buyer):
    order = order_paid(buyer, license_duration_days=30, license_entitlements=["pro", "cloud"])

    license = license_issue(order_id=order.pk, actor=LICENSING_WORKER)

    assert license is not None
    assert KEY_FORMAT.match(license.license_key), license.license_key
    active = SigningKey.objects.get(purpose="license", status=SigningKeyStatus.ACTIVE)
    parsed = jws_parse(license.token)
    assert parsed.header == {"alg": "EdDSA", "kid": active.kid, "typ": "mkp-license+jwt"}
    assert license.kid == active.kid
    assert license.expires_at == license.issued_at + timedelta(days=30)
    assert parsed.payload == {
        "iss": "marketplace:licensing",
        "aud": "marketplace:license",
        "jti": str(license.pk),
        "order": str(order.pk),
        "sku": order.sku_slug,
        "sku_version": order.sku_version,
        "sub": str(buyer.uuid),
        "iat": int(license.issued_at.timestamp()),
        "exp": int(license.expires_at.timestamp()),
        "entitlements": ["pro", "cloud"],
        "seats": 1,
    }
    assert (license.status, license.entitlements) == (LicenseStatus.ACTIVE, ["pro", "cloud"])
    assert audit_actions(license) == ["license.issued"]
    assert license_verify(license.token) == license_verify(license.token)
    assert license_verify(license.token).valid


def test_license_without_a_duration_is_perpetual(buyer):
    order = order_paid(buyer, license_duration_days=None)
    license = license_issue(order_id=order.pk, actor=LICENSING_WORKER)

    assert license.expires_at is None
    # The token still carries an exp, the last second of year 9999, so that an offline
    # verifier can require one.
    assert jws_parse(license.token).payload["exp"] == PERPETUAL_EXP == 253402300799
    far_future = license.issued_at + timedelta(days=365 * 200)
    assert license_verify(license.token, now=far_future).valid


def test_issued_once_however_often_it_is_asked(buyer):
    order = order_paid(buyer)
    first = license_issue(order_id=order.pk, actor=LICENSING_WORKER)
    assert license_issue(order_id=order.pk, actor=LICENSING_WORKER) is None
    order_fulfil(order_id=order.pk)
    order_fulfil(order_id=order.pk)

    assert list(License.objects.filter(order=order)) == [first]
    assert audit_actions(first) == ["license.issued"]


def test_order_not_released_or_maintenance_gets_no_license(buyer, settings):
    pending = order_checked_out(buyer, sku_for_sale())
    assert license_issue(order_id=pending.pk, actor=LICENSING_WORKER) is None

    paid = order_paid(buyer)
    settings.MAINTENANCE_MODE = True
    assert license_issue(order_id=paid.pk, actor=LICENSING_WORKER) is None
    assert not License.objects.exists()

    settings.MAINTENANCE_MODE = False
    assert license_issue(order_id=paid.pk, actor=LICENSING_WORKER) is not None


@pytest.mark.django_db(transaction=True)
def test_two_workers_at_once_issue_one_license(buyer):
    order = order_paid(buyer)
    signing_key_active(purpose=SigningKeyPurpose.LICENSE)  # not a race under test here
    barrier = threading.Barrier(2)
    results: list = []
    errors: list = []

    def work() -> None:
        try:
            barrier.wait(timeout=10)
            results.append(license_issue(order_id=order.pk, actor=LICENSING_WORKER))
        except Exception as exc:  # reported below, with the thread's failure
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    issued = [license for license in results if license is not None]
    assert len(issued) == 1
    assert list(License.objects.filter(order=order).values_list("pk", flat=True)) == [issued[0].pk]
    assert audit_actions(issued[0]) == ["license.issued"]


# --- Verifying ---------------------------------------------------------------------------------


@pytest.fixture
def license(buyer) -> License:
    return License.objects.get(order=order_licensed(buyer, license_duration_days=10))


def test_a_valid_license_verifies_with_its_claims(license):
    verdict = license_verify(license.token)
    assert (verdict.valid, verdict.reason, verdict.license_id) == (True, "valid", str(license.pk))
    assert verdict.claims["order"] == str(license.order_id)


def _flip(text: str, index: int) -> str:
    return text[:index] + ("A" if text[index] != "A" else "B") + text[index + 1 :]


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        pytest.param(lambda t: forged(t, sku="something-else"), "bad-signature", id="payload"),
        pytest.param(lambda t: forged(t, exp=4102444800), "bad-signature", id="later-expiry"),
        pytest.param(
            # A character in the middle: the last one carries padding bits that may not count.
            lambda t: _flip(t, t.rindex(".") + 20),
            "bad-signature",
            id="signature",
        ),
        pytest.param(lambda t: _flip(t, 5), "malformed", id="header"),
        # 76 characters still decode (to 57 bytes); 85 cannot be base64 at all.
        pytest.param(lambda t: t[:-10], "bad-signature", id="truncated-signature"),
        pytest.param(lambda t: t[:-1], "malformed", id="truncated-by-one"),
        pytest.param(lambda t: t[: len(t) // 2], "malformed", id="truncated-half"),
        pytest.param(lambda t: t.rsplit(".", 1)[0], "malformed", id="two-parts"),
        pytest.param(lambda t: t + ".AAAA", "malformed", id="four-parts"),
        pytest.param(lambda t: "", "malformed", id="empty"),
        pytest.param(lambda t: "é.é.é", "malformed", id="not-base64"),
        pytest.param(lambda t: "a=b=.c=d.e", "malformed", id="bad-padding"),
        pytest.param(
            lambda t: f"{t.split('.')[0]}.{b64url(b'not json')}.{t.split('.')[2]}",
            "malformed",
            id="payload-not-json",
        ),
        pytest.param(
            lambda t: f"{t.split('.')[0]}.{b64url(b'[1, 2]')}.{t.split('.')[2]}",
            "malformed",
            id="payload-not-object",
        ),
        pytest.param(
            lambda t: f"{b64url(b'{}')}.{t.split('.')[1]}.{t.split('.')[2]}",
            "malformed",
            id="header-without-kid",
        ),
        pytest.param(
            lambda t: f"{b64url(b'[' * 9000)}.{t.split('.')[1]}.{t.split('.')[2]}",
            "malformed",
            id="nested-too-deep",
        ),
        pytest.param(
            lambda t: (
                f"{b64url(json.dumps({'alg': 'EdDSA', 'kid': 'license-nobody'}).encode())}"
                f".{t.split('.')[1]}.{t.split('.')[2]}"
            ),
            "unknown-key",
            id="unknown-kid",
        ),
        pytest.param(
            lambda t: (
                f"{b64url(json.dumps({'alg': 'none', 'kid': jws_parse(t).kid}).encode())}"
                f".{t.split('.')[1]}."
            ),
            "bad-signature",
            id="alg-none",
        ),
    ],
)
def test_a_damaged_token_is_invalid_with_its_reason(license, make, reason):
    verdict = license_verify(make(license.token))
    assert verdict.valid is False
    assert verdict.reason.split(":")[0] == reason, verdict.reason


def test_a_token_signed_by_a_revoked_key_is_invalid(license):
    signing_key_revoke(kid=license.kid, reason="leaked", actor=TEST_ACTOR)
    verdict = license_verify(license.token)
    assert (verdict.valid, verdict.reason.split(":")[0]) == (False, "unknown-key")


def test_a_token_signed_by_another_purposes_key_is_invalid(license):
    audit_signer = signer_for(signing_key_active(purpose=SigningKeyPurpose.AUDIT))
    claims = jws_parse(license.token).payload
    header = {"alg": audit_signer.algorithm, "kid": audit_signer.kid, "typ": "JWT"}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    token = f"{signing_input}.{b64url(audit_signer.sign(signing_input.encode()))}"
    assert license_verify(token).reason.startswith("unknown-key")


def test_an_expired_license_is_invalid(license):
    assert license_verify(license.token, now=license.expires_at - timedelta(seconds=1)).valid
    verdict = license_verify(license.token, now=license.expires_at)
    assert (verdict.valid, verdict.reason) == (False, "expired")


def test_a_revoked_license_is_invalid(license):
    revoked = license_revoke(license_id=license.pk, reason="chargeback", actor=TEST_ACTOR)
    assert (revoked.status, revoked.revoked_reason) == (LicenseStatus.REVOKED, "chargeback")
    verdict = license_verify(license.token)
    assert (verdict.valid, verdict.reason) == (False, "revoked")
    # Revoking again changes nothing and records nothing more.
    license_revoke(license_id=license.pk, reason="again", actor=TEST_ACTOR)
    assert audit_actions(license) == ["license.issued", "license.revoked"]


def test_revoking_needs_a_reason_and_writes_nothing_without_one(license):
    events = AuditEvent.objects.count()
    with pytest.raises(InvalidInput) as raised:
        license_revoke(license_id=license.pk, reason="  ", actor=TEST_ACTOR)
    assert raised.value.errors == {"reason": ["Required."]}
    license.refresh_from_db()
    assert license.status == LicenseStatus.ACTIVE
    assert AuditEvent.objects.count() == events


def test_a_refund_invalidates_the_license_before_and_after_its_revocation(buyer):
    order = order_licensed(buyer)
    license = License.objects.get(order=order)
    order_refunded(order)
    # orders hands the revocation to a worker; until it runs, the order's status decides.
    assert license_verify(license.token).reason == "revoked"
    assert order_revoked(order) == {"licenses": 1, "deliveries": 1}
    license.refresh_from_db()
    assert (license.status, license.revoked_reason) == (LicenseStatus.REVOKED, "refunded")
    assert license_verify(license.token).reason == "revoked"


def test_a_license_this_platform_never_recorded_is_unknown(license):
    signer = signer_for(signing_key_active(purpose=SigningKeyPurpose.LICENSE))
    header = {"alg": signer.algorithm, "kid": signer.kid, "typ": LICENSE_TOKEN.typ}
    claims = {**jws_parse(license.token).payload, "jti": "00000000-0000-0000-0000-000000000000"}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    token = f"{signing_input}.{b64url(signer.sign(signing_input.encode()))}"
    assert license_verify(token).reason.startswith("unknown-license")


# --- Reissuing ---------------------------------------------------------------------------------


def test_reissue_supersedes_and_revokes_the_old_license(license):
    new = license_reissue(license_id=license.pk, reason="buyer lost it", actor=TEST_ACTOR)

    license.refresh_from_db()
    assert new.supersedes == license
    assert new.order_id == license.order_id
    assert new.license_key != license.license_key
    assert (license.status, license.revoked_reason) == (
        LicenseStatus.REVOKED,
        "reissued: buyer lost it",
    )
    assert new.status == LicenseStatus.ACTIVE
    assert license_verify(license.token).reason == "revoked"
    assert license_verify(new.token).valid
    assert audit_actions(license) == ["license.issued", "license.revoked"]
    assert audit_actions(new) == ["license.reissued"]
    event = AuditEvent.objects.get(subject_type="license", subject_id=str(new.pk))
    assert event.data["supersedes"] == str(license.pk)
    assert event.actor_type == TEST_ACTOR.type

    with pytest.raises(Conflict, match="already reissued"):
        license_reissue(license_id=license.pk, reason="twice", actor=TEST_ACTOR)
    assert License.objects.filter(order=license.order).count() == 2


def test_reissuing_a_revoked_license_records_no_second_revocation(license):
    license_revoke(license_id=license.pk, reason="leaked", actor=TEST_ACTOR)

    new = license_reissue(license_id=license.pk, reason="replacement", actor=TEST_ACTOR)

    license.refresh_from_db()
    assert license.revoked_reason == "leaked"  # the revocation it had stands
    assert audit_actions(license) == ["license.issued", "license.revoked"]
    assert audit_actions(new) == ["license.reissued"]
    assert license_verify(new.token).valid


def test_reissue_is_refused_for_a_refunded_order_and_in_maintenance(buyer, settings):
    order = order_licensed(buyer)
    license = License.objects.get(order=order)
    events = AuditEvent.objects.count()

    settings.MAINTENANCE_MODE = True
    with pytest.raises(Conflict, match="Maintenance"):
        license_reissue(license_id=license.pk, actor=TEST_ACTOR)
    settings.MAINTENANCE_MODE = False

    order_refunded(order)
    events = AuditEvent.objects.count()
    with pytest.raises(Conflict, match="refunded"):
        license_reissue(license_id=license.pk, actor=TEST_ACTOR)
    assert License.objects.filter(order=order).count() == 1
    assert AuditEvent.objects.count() == events


# --- Keys typed by people ----------------------------------------------------------------------


def test_license_keys_are_found_however_they_are_typed(license):
    key = license.license_key
    body = key.removeprefix("MKP-").replace("-", "")
    typed = [
        key,
        key.lower(),
        body,
        body.lower(),
        " ".join(body[i : i + 5] for i in range(0, 20, 5)),
        "mkp\u2013" + body,  # an en dash, as word processors make it
        key.replace("0", "o").replace("1", "l"),
    ]
    for text in typed:
        assert license_key_normalize(text) == key, text
    for text in ("", "MKP-", "not a key", body[:-1], body + "U", "MKP-" + body + "X"):
        assert license_key_normalize(text) is None, text


# --- Offline, with an independent JOSE library -------------------------------------------------


def test_pyjwt_verifies_the_license_against_the_published_jwks(client, license):
    claims = pyjwt_claims(license.token, jwks(client))
    assert claims["jti"] == str(license.pk)
    assert claims["exp"] == int(license.expires_at.timestamp())

    with pytest.raises(jwt.InvalidSignatureError):
        pyjwt_claims(forged(license.token, sku="other"), jwks(client))


def test_rotation_keeps_old_licenses_verifying_and_signs_new_ones_with_the_new_key(
    client, buyer, license
):
    old_kid = license.kid
    assert rotated("license").status == "applied"

    new_key = SigningKey.objects.get(purpose="license", status=SigningKeyStatus.ACTIVE)
    assert new_key.kid != old_kid
    assert SigningKey.objects.get(kid=old_kid).status == SigningKeyStatus.RETIRED
    document = jwks(client)
    assert {old_kid, new_key.kid} <= {key["kid"] for key in document["keys"]}

    assert pyjwt_claims(license.token, document)["jti"] == str(license.pk)
    assert license_verify(license.token).valid

    newer = License.objects.get(order=order_licensed(buyer))
    assert newer.kid == new_key.kid
    assert jwt.get_unverified_header(newer.token)["kid"] == new_key.kid
    assert pyjwt_claims(newer.token, document)["jti"] == str(newer.pk)
    assert license_verify(newer.token).valid

    # Revoking the retired key takes it out of the JWK Set: its licenses stop verifying.
    signing_key_revoke(kid=old_kid, reason="compromised", actor=TEST_ACTOR)
    document = jwks(client)
    assert old_kid not in {key["kid"] for key in document["keys"]}
    with pytest.raises(KeyError):
        pyjwt_claims(license.token, document)
    assert license_verify(license.token).reason.startswith("unknown-key")
