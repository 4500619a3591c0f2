"""`ferry certs FOLDER`: a private certificate authority and the certificates for mutual TLS on xDS.

With them, `ferry up --xds-cert server.crt --xds-key server.key --xds-ca ca.crt` serves xDS only to clients that
present a certificate of this CA (gateways: `ferry bootstrap --xds-cert gateway.crt ...`; follower replicas use
the server's own certificate, which is also a client one), and serves its API over TLS (tls.py). Made with `cryptography` (pyca): EC P-256 keys, the
CA's key never leaves FOLDER, every private key is written 0600. Rotate by making a new folder and rolling
ferry and its gateways onto it.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .statedir import prepare, write_private
from .tls import SERVER_NAME
FILES = ("ca.crt", "ca.key", "server.crt", "server.key", "gateway.crt", "gateway.key")


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ferry"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _alt_names(names: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def _certificate(subject: str, key, issuer: x509.Name, issuer_key, *, days: int, ca: bool = False,
                 names: list[str] = (), usages: tuple = ()) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_encipherment=False, content_commitment=False, data_encipherment=False,
            key_agreement=True, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False),
            critical=True)
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(_alt_names(list(names))), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def generate(*, hosts: list[str] = (), days: int = 365) -> dict[str, bytes]:
    """A CA, ferry's certificate (server and client: followers connect to the leader with it; for SERVER_NAME,
    localhost, 127.0.0.1 and `hosts`) and a gateway's client certificate, in PEM, by file name (FILES)."""
    ca_key, server_key, gateway_key = _key(), _key(), _key()
    ca = _certificate("ferry CA", ca_key, _name("ferry CA"), ca_key, days=days * 10, ca=True)
    server = _certificate(SERVER_NAME, server_key, ca.subject, ca_key, days=days,
                          names=[SERVER_NAME, "localhost", "127.0.0.1", *hosts],
                          usages=(ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH))
    gateway = _certificate("ferry gateway", gateway_key, ca.subject, ca_key, days=days,
                           usages=(ExtendedKeyUsageOID.CLIENT_AUTH,))
    return {"ca.crt": _pem(ca), "ca.key": _key_pem(ca_key), "server.crt": _pem(server),
            "server.key": _key_pem(server_key), "gateway.crt": _pem(gateway), "gateway.key": _key_pem(gateway_key)}


def make(folder: Path, *, hosts: list[str] = (), days: int = 365) -> dict[str, Path]:
    """Write generate()'s files into `folder` (0700; every file 0600)."""
    prepare(folder)
    paths = {}
    for name, data in generate(hosts=hosts, days=days).items():
        paths[name] = folder / name
        write_private(paths[name], data)
    return paths


def ensure(folder: Path, *, hosts: list[str] = (), days: int = 365) -> dict[str, bytes]:
    """The certificates in `folder`, made there first if any is missing (`ferry manifests` keeps an install's)."""
    if not all((folder / name).is_file() for name in FILES):
        make(folder, hosts=hosts, days=days)
    return {name: (folder / name).read_bytes() for name in FILES}
