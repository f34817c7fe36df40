"""Shared by the xds and identity tests: an event-loop runner, polling, and a throwaway PKI."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def run(coro: Coroutine[Any, Any, None], timeout: float = 20.0) -> None:
    """asyncio.run with a hard cap, so a protocol bug fails the test instead of hanging."""
    async def capped() -> None:
        async with asyncio.timeout(timeout):
            await coro
    asyncio.run(capped())


async def until(pred: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached in {timeout}s: {what}")
        await asyncio.sleep(0.01)


def _pem(c: x509.Certificate) -> bytes:
    return c.public_bytes(serialization.Encoding.PEM)


@dataclass
class Ca:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def pem(self) -> bytes:
        return _pem(self.cert)

    @classmethod
    def new(cls, name: str = "meshnode test root") -> Ca:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                             False, False), critical=True)
                .sign(key, hashes.SHA256()))
        return cls(key, cert)

    def server_cert(self, host: str = "localhost") -> tuple[bytes, bytes]:
        """(key PEM, cert PEM) for a TLS server answering as `host` and 127.0.0.1."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([
                    x509.DNSName(host), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                    critical=False)
                .sign(self.key, hashes.SHA256()))
        return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()), _pem(cert))

    def sign_csr(self, csr_pem: str, ttl_seconds: float, backdate: float = 0.0) -> str:
        """A workload leaf: the CSR's SAN, cA=false, digitalSignature, server+client auth."""
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        assert csr.is_signature_valid
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        cert = (x509.CertificateBuilder().subject_name(x509.Name([]))
                .issuer_name(self.cert.subject).public_key(csr.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(seconds=backdate))
                .not_valid_after(now + dt.timedelta(seconds=ttl_seconds))
                .add_extension(san.value, critical=True)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(self.key, hashes.SHA256()))
        return _pem(cert).decode()

    def write(self, d: Path, name: str = "root.pem") -> str:
        p = d / name
        p.write_bytes(self.pem)
        return str(p)
