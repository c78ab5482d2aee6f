"""A test certificate authority with server and client certificates for mutual TLS, made with
`cryptography` and written as PEM files."""

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# --- Certificates ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path
    subject: str  # RFC 4514, as the server reports the client certificates it sees


@dataclass(frozen=True)
class KernelPki:
    ca_cert: Path
    server: CertFiles
    client: CertFiles
    rogue_ca_cert: Path
    rogue_client: CertFiles


@dataclass(frozen=True)
class _Authority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(common_name: str, organization: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _issue(
    *,
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: _Authority | None,
    purpose: str,
) -> x509.Certificate:
    """A certificate for `key`; self-signed when there is no issuer. `purpose` is "ca",
    "server" or "client". The extensions are the ones OpenSSL's strict checks expect, so the
    handshakes fail only for the reasons the tests set up."""
    now = dt.datetime.now(dt.UTC)
    public_key = key.public_key()
    signer_key = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()),
            critical=False,
        )
    )
    is_ca = purpose == "ca"
    builder = builder.add_extension(
        x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None), critical=True
    ).add_extension(
        x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=is_ca,
            crl_sign=is_ca,
            encipher_only=False,
            decipher_only=False,
        ),
        critical=True,
    )
    if purpose == "server":
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        ).add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    elif purpose == "client":
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(signer_key, hashes.SHA256())


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256 rather than RSA: generating a handful of keys stays in the milliseconds.
    return ec.generate_private_key(ec.SECP256R1())


def _authority(common_name: str, organization: str) -> _Authority:
    key = _new_key()
    cert = _issue(subject=_name(common_name, organization), key=key, issuer=None, purpose="ca")
    return _Authority(cert=cert, key=key)


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _leaf(
    folder: Path, stem: str, *, issuer: _Authority, subject: x509.Name, purpose: str
) -> CertFiles:
    key = _new_key()
    cert = _issue(subject=subject, key=key, issuer=issuer, purpose=purpose)
    key_path = folder / f"{stem}.key.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return CertFiles(
        cert=_write_cert(folder / f"{stem}.cert.pem", cert),
        key=key_path,
        subject=subject.rfc4514_string(),
    )


def kernel_pki_create(folder: Path) -> KernelPki:
    """Writes a test CA, the Kernel's server certificate, our client certificate and a rogue
    client certificate from another CA into `folder`."""
    ca = _authority("Kernel Test CA", "Kernel Test")
    rogue_ca = _authority("Rogue Test CA", "Rogue")
    return KernelPki(
        ca_cert=_write_cert(folder / "ca.cert.pem", ca.cert),
        server=_leaf(
            folder,
            "server",
            issuer=ca,
            subject=_name("kernel.test", "Kernel Test"),
            purpose="server",
        ),
        client=_leaf(
            folder,
            "client",
            issuer=ca,
            subject=_name("marketplace-test-client", "Marketplace Tests"),
            purpose="client",
        ),
        rogue_ca_cert=_write_cert(folder / "rogue-ca.cert.pem", rogue_ca.cert),
        rogue_client=_leaf(
            folder,
            "rogue-client",
            issuer=rogue_ca,
            subject=_name("marketplace-test-client", "Rogue"),
            purpose="client",
        ),
    )
