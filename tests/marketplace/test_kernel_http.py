"""The HTTP backend of the Kernel client against a real HTTPS server that requires our client
certificate (tests/support/kernel.py). The server is the edge; nothing of ours is replaced."""

import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from marketplace.kernel import (
    HttpKernel,
    Kernel,
    KernelUnavailable,
    LocalKernel,
    ManifestVerdict,
    PublisherKey,
    get_kernel,
)
from tests.support.kernel import (
    VERIFY_PATH,
    KernelServer,
    ReceivedRequest,
    json_reply,
    not_json,
    redirect,
    rejected,
    server_error,
    slow,
    verified,
)
from tests.support.keys import new_signing_key, sign_manifest
from tests.support.net import free_port

MANIFEST: dict[str, Any] = {
    "schema": "marketplace.manifest/v1",
    "publisher": "acme",
    "sku": "acme-tool",
    "version": "1.0.0",
    "artifact": {"filename": "package.zip", "size": 4096, "sha256": "ab" * 32},
}
CLIENT_SUBJECT = "CN=marketplace-test-client,O=Marketplace Tests"
CLIENT_ISSUER = "CN=Kernel Test CA,O=Kernel Test"


def _publisher_key(key_id: str, private_key: Ed25519PrivateKey) -> PublisherKey:
    raw = private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return PublisherKey(key_id=key_id, public_key=raw)


def _http_kernel(kernel: KernelServer, **overrides: Any) -> HttpKernel:
    pki = kernel.pki
    config: dict[str, Any] = {
        "base_url": kernel.url,
        "cert": str(pki.client.cert),
        "key": str(pki.client.key),
        "ca": str(pki.ca_cert),
        "timeout": 2.0,
    }
    return HttpKernel(**(config | overrides))


def _ask(client: Kernel, signature: str = "c2lnbmF0dXJl") -> ManifestVerdict:
    return client.verify_manifest(
        publisher="acme",
        publisher_keys=[_publisher_key("k1", new_signing_key())],
        manifest=MANIFEST,
        signature=signature,
    )


def test_without_a_kernel_url_the_local_backend_is_used(settings: Any) -> None:
    settings.KERNEL_URL = ""

    assert isinstance(get_kernel(), LocalKernel)


def test_a_manifest_the_kernel_verifies_is_verified(kernel: KernelServer) -> None:
    old_key, signing_key = new_signing_key(), new_signing_key()
    kernel.register_key("acme", "k2", signing_key.public_key())
    signature = sign_manifest(signing_key, MANIFEST)

    verdict = get_kernel().verify_manifest(
        publisher="acme",
        publisher_keys=[_publisher_key("k1", old_key), _publisher_key("k2", signing_key)],
        manifest=MANIFEST,
        signature=signature,
    )

    assert verdict == ManifestVerdict(True, "signature by acme/k2 is valid", "k2")
    assert kernel.requests == [
        ReceivedRequest(
            method="POST",
            path=VERIFY_PATH,
            content_type="application/json",
            body={
                "publisher": "acme",
                "manifest": MANIFEST,
                "signature": signature,
                "registered_key_ids": ["k1", "k2"],
            },
            client_subject=CLIENT_SUBJECT,
            client_issuer=CLIENT_ISSUER,
        )
    ]
    assert kernel.refusals == []


def test_a_trailing_slash_on_the_url_does_not_change_the_path(kernel: KernelServer) -> None:
    kernel.script(verified("k1"))

    verdict = _ask(_http_kernel(kernel, base_url=kernel.url + "/"))

    assert verdict == ManifestVerdict(True, "signed with key k1", "k1")
    assert [request.path for request in kernel.requests] == [VERIFY_PATH]


def test_a_verdict_without_reason_or_key_id_gets_a_default_reason(kernel: KernelServer) -> None:
    kernel.script(json_reply(200, {"verified": True}))

    assert _ask(_http_kernel(kernel)) == ManifestVerdict(True, "verified by the Kernel", "")


def test_a_signature_under_a_key_the_kernel_does_not_know_is_rejected(
    kernel: KernelServer,
) -> None:
    signing_key = new_signing_key()
    kernel.register_key("acme", "k1", new_signing_key().public_key())

    verdict = _ask(_http_kernel(kernel), signature=sign_manifest(signing_key, MANIFEST))

    assert verdict == ManifestVerdict(
        False,
        "the Kernel rejected the manifest: no key of acme known to the Kernel matches the "
        "signature (tried: k1)",
    )


@pytest.mark.parametrize(
    ("status", "field"), [(200, "reason"), (400, "detail"), (409, "reason"), (422, "detail")]
)
def test_the_kernels_reason_for_a_rejection_is_passed_through(
    kernel: KernelServer, status: int, field: str
) -> None:
    kernel.script(rejected("key k1 was revoked by acme on 2026-03-01", status=status, field=field))

    verdict = _ask(_http_kernel(kernel))

    assert verdict == ManifestVerdict(
        False, "the Kernel rejected the manifest: key k1 was revoked by acme on 2026-03-01", ""
    )


@pytest.mark.parametrize("status", [500, 502, 503])
def test_a_server_error_leaves_the_question_open(kernel: KernelServer, status: int) -> None:
    kernel.script(server_error(status), verified("k1"))

    with pytest.raises(KernelUnavailable) as raised:
        _ask(_http_kernel(kernel))

    assert str(raised.value) == f"the Kernel at {kernel.url} failed with HTTP {status}"
    assert len(kernel.requests) == 1  # no retry here: the task that called retries with backoff


def test_a_kernel_slower_than_the_timeout_is_unavailable(
    kernel: KernelServer, settings: Any
) -> None:
    settings.KERNEL_TIMEOUT_SECONDS = 0.25
    kernel.script(slow(5.0, then=verified("k1")))

    started = time.monotonic()
    with pytest.raises(KernelUnavailable) as raised:
        _ask(get_kernel())
    elapsed = time.monotonic() - started

    message = str(raised.value)
    assert message.startswith(f"the Kernel at {kernel.url} is unreachable: ")
    assert "Read timed out. (read timeout=0.25)" in message
    assert 0.25 <= elapsed < 1.5
    assert len(kernel.requests) == 1


@pytest.mark.parametrize("status", [200, 422])
def test_an_answer_that_is_not_json_is_unavailable(kernel: KernelServer, status: int) -> None:
    kernel.script(not_json(status))

    with pytest.raises(KernelUnavailable) as raised:
        _ask(_http_kernel(kernel))

    assert str(raised.value) == (
        f"the Kernel at {kernel.url} answered HTTP {status} with a body that is not JSON"
    )


@pytest.mark.parametrize("document", [None, [], ["verified"], "verified", True])
def test_json_that_is_not_an_object_is_unavailable(kernel: KernelServer, document: Any) -> None:
    kernel.script(json_reply(200, document))

    with pytest.raises(KernelUnavailable) as raised:
        _ask(_http_kernel(kernel))

    assert str(raised.value) == (
        f"the Kernel at {kernel.url} answered HTTP 200 with JSON that is not an object"
    )


@pytest.mark.parametrize("status", [401, 403, 404, 429])
def test_an_unexpected_status_is_unavailable(kernel: KernelServer, status: int) -> None:
    kernel.script(json_reply(status, {"detail": "go away"}))

    with pytest.raises(KernelUnavailable) as raised:
        _ask(_http_kernel(kernel))

    assert str(raised.value) == (
        f"the Kernel at {kernel.url} answered HTTP {status} without a verdict"
    )


@pytest.mark.parametrize("body", [{}, {"verified": "true"}, {"verified": None, "key_id": None}])
def test_a_200_without_a_boolean_verdict_is_unavailable_not_a_rejection(
    kernel: KernelServer, body: dict
) -> None:
    # Read as a rejection, a Kernel bug would take every re-verified SKU off sale.
    kernel.script(json_reply(200, body))

    with pytest.raises(KernelUnavailable, match="answered HTTP 200 without a verdict"):
        _ask(_http_kernel(kernel))


def test_an_unreadable_client_certificate_is_unavailable(
    kernel: KernelServer, settings, tmp_path
) -> None:
    settings.KERNEL_CERT = str(tmp_path / "missing-cert.pem")

    with pytest.raises(KernelUnavailable, match="is unreachable"):
        _ask(get_kernel())


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_not_followed(kernel: KernelServer, status: int) -> None:
    # Were it followed, the second scripted reply would be taken for the Kernel's verdict.
    kernel.script(redirect(kernel.url + VERIFY_PATH, status=status), verified("k1"))

    with pytest.raises(KernelUnavailable) as raised:
        _ask(_http_kernel(kernel))

    assert str(raised.value) == (
        f"the Kernel at {kernel.url} answered HTTP {status} with a body that is not JSON"
    )
    assert len(kernel.requests) == 1


def test_a_kernel_that_is_down_is_unavailable_and_named(kernel: KernelServer) -> None:
    closed = f"https://127.0.0.1:{free_port()}"

    with pytest.raises(KernelUnavailable) as raised:
        _ask(_http_kernel(kernel, base_url=closed))

    message = str(raised.value)
    assert message.startswith(f"the Kernel at {closed} is unreachable: ")
    assert "Connection refused" in message


def test_without_a_client_certificate_the_handshake_is_refused(
    kernel: KernelServer, settings: Any
) -> None:
    settings.KERNEL_CERT = ""
    settings.KERNEL_KEY = ""

    with pytest.raises(KernelUnavailable) as raised:
        _ask(get_kernel())

    assert str(raised.value).startswith(f"the Kernel at {kernel.url} is unreachable: ")
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in kernel.wait_for_refusal()
    assert kernel.requests == []


def test_a_client_certificate_from_another_ca_is_refused(kernel: KernelServer) -> None:
    rogue = kernel.pki.rogue_client

    with pytest.raises(KernelUnavailable) as raised:
        _ask(_http_kernel(kernel, cert=str(rogue.cert), key=str(rogue.key)))

    assert str(raised.value).startswith(f"the Kernel at {kernel.url} is unreachable: ")
    assert "certificate verify failed: unable to get local issuer certificate" in (
        kernel.wait_for_refusal()
    )
    assert kernel.requests == []


@pytest.mark.parametrize("bundle", ["rogue CA", "public CAs"])
def test_a_server_certificate_outside_the_ca_bundle_is_not_trusted(
    kernel: KernelServer, bundle: str
) -> None:
    # "" means requests' default: the public CAs, which never signed the Kernel's certificate.
    ca = str(kernel.pki.rogue_ca_cert) if bundle == "rogue CA" else ""

    with pytest.raises(KernelUnavailable) as raised:
        _ask(_http_kernel(kernel, ca=ca))

    message = str(raised.value)
    assert message.startswith(f"the Kernel at {kernel.url} is unreachable: ")
    assert "CERTIFICATE_VERIFY_FAILED" in message
    assert "TLSV1_ALERT_UNKNOWN_CA" in kernel.wait_for_refusal()
    assert kernel.requests == []
