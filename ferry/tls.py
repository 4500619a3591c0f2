"""Mutual TLS between ferry's replicas and with its gateways, from the files `ferry certs` makes.

One certificate set serves both of ferry's surfaces when `ferry up --xds-cert/--xds-key/--xds-ca` is given:
xDS (gRPC, which takes the files' bytes) only answers clients with a certificate of the CA; the HTTP API is
served over TLS too, asks for a client certificate and, for the replica routes (`/replicas/...`), requires one.
Users' clients (`ferry status --api https://... --ca ca.crt`) need no certificate: the bearer token is theirs.
Followers reach the leader with the server certificate, which is also a client one.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

SERVER_NAME = "ferry"  # every ferry certificate carries it; clients check it whatever address they dial


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(certificate, key, CA) in PEM, as gRPC takes them."""
        return self.cert.read_bytes(), self.key.read_bytes(), self.ca.read_bytes()

    def server_context(self) -> ssl.SSLContext:
        """For the API: a client certificate is asked for and checked when given (the replica routes need one)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.cert), str(self.key))
        context.verify_mode = ssl.CERT_OPTIONAL
        return context

    def client_context(self) -> ssl.SSLContext:
        """For a replica calling another: presents this certificate, trusts only the CA."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.cert), str(self.key))
        return context


def has_client_certificate(transport) -> bool:
    """Whether the peer of an API connection presented a certificate the CA signed (CERT_OPTIONAL checked it)."""
    return transport is not None and bool(transport.get_extra_info("peercert"))
