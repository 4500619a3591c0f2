"""Certificates for the HTTPS tests and bench/tls.py: a CA, leaf certificates with DNS names, clients that trust it."""

from __future__ import annotations

import datetime
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass
class Ca:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def make(cls, name: str = "ferry test CA") -> Ca:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                             crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        return cls(key, cert)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, *names: str, days: float = 10, not_before_days: float = -1, key=None) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) for DNS `names`."""
        key = key or ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(_name(names[0] if names else "no names"))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now + datetime.timedelta(days=not_before_days))
                .not_valid_after(now + datetime.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
        if names:
            cert = cert.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        cert = cert.sign(self.key, hashes.SHA256())
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return cert.public_bytes(serialization.Encoding.PEM), key_pem

    def client_context(self, *, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
        """A client that trusts only this CA (and checks the host name against SNI)."""
        context = ssl.create_default_context(cadata=self.pem.decode())
        if alpn:
            context.set_alpn_protocols(list(alpn))
        return context


def write_pair(folder: Path, name: str, pair: tuple[bytes, bytes]) -> tuple[Path, Path]:
    """Write certificate and key as editors do (a new file renamed over the old), certificate first."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / f"{name}.crt", folder / f"{name}.key"
    for path, data in zip(paths, pair, strict=True):
        write_atomically(path, data)
    return paths


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def fingerprint(pem_or_der: bytes) -> str:
    """The SHA-256 of a certificate (as KeyPair.sha256 and status show it)."""
    cert = (x509.load_pem_x509_certificate(pem_or_der) if pem_or_der.startswith(b"-----")
            else x509.load_der_x509_certificate(pem_or_der))
    return cert.fingerprint(hashes.SHA256()).hex()
