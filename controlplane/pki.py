"""The CA's key material: the root (made or loaded), workload leaves, the server's TLS cert."""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from core import pem

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
ROOT_TTL = datetime.timedelta(days=3650)
SERVER_TTL = datetime.timedelta(days=365)
# Certificates start a little in the past so that a node whose clock lags accepts them.
CLOCK_SKEW = datetime.timedelta(minutes=5)


class PkiError(ValueError):
    pass


@dataclass(frozen=True)
class RootCA:
    cert: x509.Certificate
    key: SigningKey

    @property
    def cert_pem(self) -> str:
        return pem.cert_pem(self.cert)

    def key_pem(self) -> bytes:
        return pem.key_pem(self.key)


def generate_root(trust_domain: str) -> RootCA:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                      x509.NameAttribute(NameOID.COMMON_NAME, "meshnode root CA")])
    now = _now()
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + ROOT_TTL)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return RootCA(cert, key)


def load_root(cert_path: Path, key_path: Path) -> RootCA:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as exc:
        raise PkiError(f"{exc.filename}: {exc.strerror}") from None
    except ValueError as exc:
        raise PkiError(f"{cert_path} / {key_path}: not a PEM certificate and key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PkiError(f"{key_path}: the root key must be ECDSA or RSA")
    if pem.spki(key.public_key()) != pem.spki(cert):
        raise PkiError(f"{key_path} is not the key of {cert_path}")
    try:
        if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise PkiError(f"{cert_path}: not a CA certificate")
    except x509.ExtensionNotFound:
        raise PkiError(f"{cert_path}: not a CA certificate (no basicConstraints)") from None
    return RootCA(cert, key)


def load_or_create_root(cert_path: Path, key_path: Path, trust_domain: str) -> RootCA:
    """Reuse the root in the state dir so restarts keep every issued certificate valid."""
    if cert_path.exists() or key_path.exists():
        return load_root(cert_path, key_path)
    root = generate_root(trust_domain)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(root.key_pem())
    cert_path.write_text(root.cert_pem)
    return root


def sign_workload(root: RootCA, public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
                  spiffe_id: str, ttl: datetime.timedelta) -> x509.Certificate:
    """An X509-SVID: empty subject, exactly one URI SAN (critical), not a CA, both EKUs."""
    now = _now()
    not_after = min(now + ttl, root.cert.not_valid_after_utc)
    return (_leaf_builder(root, public_key, now, not_after)
            .subject_name(x509.Name([]))
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(spiffe_id)]), critical=True)
            .sign(root.key, hashes.SHA256()))


def server_cert(root: RootCA, dns_names: list[str],
                ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> tuple[bytes, bytes]:
    """A TLS serving key and certificate for the control plane itself, as PEM (key, chain)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ip) for ip in ips]
    cert = (_leaf_builder(root, key.public_key(), now, now + SERVER_TTL)
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                        dns_names[0] if dns_names else "cp")]))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(root.key, hashes.SHA256()))
    chain = cert.public_bytes(serialization.Encoding.PEM) + root.cert_pem.encode()
    return pem.key_pem(key), chain


def _leaf_builder(root: RootCA, public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
                  now: datetime.datetime, not_after: datetime.datetime) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder()
            .issuer_name(root.cert.subject).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                root.key.public_key()), critical=False))


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    # keyEncipherment is left out: TLS 1.3 with ECDSA keys never encrypts with the cert key.
    return x509.KeyUsage(digital_signature=True, content_commitment=False,
                         key_encipherment=False, data_encipherment=False,
                         key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign,
                         encipher_only=False, decipher_only=False)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)
