"""gateway.tls: its routes.yaml model, and reading its certificates (PEM files beside the routes file).

A certificate entry is read and checked as a whole: the chain parses, the key parses, the key is the one the
certificate was issued for, the certificate is valid now, and it covers every host the entry serves (its
subjectAltName DNS names; *.example.com covers one label). Any problem is reported at its YAML path (the entry's
`cert`, `key` or host) with the reason and the fix, like every other routes.yaml problem; nothing of a file is ever
quoted (a key is a secret). What passes is a `KeyPair`: the bytes the gateway will serve, read once.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, NoReturn

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails

from .errors import Loc, Problem, format_path
from .fields import Address, Bool, HostPort, OsStr, Str
from .names import host_name

MAX_PEM_BYTES = 1 << 20  # a chain of a dozen certificates is ~20 KiB; refuse to read a wrong file whole
_GROUP_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_SAN_SHOWN = 5


def _tls_host(value: str) -> str:
    """A host name, or *.<host name> (one whole leftmost label: what SNI and certificates match)."""
    if value.startswith("*."):
        host_name(value[2:], "host")
        return value
    if "*" in value:
        raise ValueError(f"host {value!r}: a wildcard is a whole leftmost label, e.g. '*.example.com'")
    return host_name(value, "host")


def _group(value: str) -> str:
    if not value or len(value) > 128 or not set(value) <= _GROUP_CHARS:
        raise ValueError(f"invalid group {value!r}: a gateway group is node.cluster (`ferry bootstrap --group`): "
                         "letters, digits, '.', '_' and '-', e.g. edge")
    return value


def _path(value: str) -> str:
    if not value.strip():
        raise ValueError("an empty path: give the PEM file's path (relative to the routes file's folder)")
    return value


TlsHost = Annotated[Str, AfterValidator(_tls_host)]
GroupName = Annotated[Str, AfterValidator(_group)]
PemPath = Annotated[OsStr, AfterValidator(_path)]


class _Model(BaseModel):
    """As schema._Model: closed and immutable (schema.py imports this module)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _fail_at(problems: list[tuple[tuple[str | int, ...], str, Any]]) -> NoReturn:
    """Fail a model validator with a problem per (location under the model, message, input), each reported at its
    own path and line (as schema._raise_at)."""
    raise ValidationError.from_exception_data("GatewayTls", [
        InitErrorDetails(type="value_error", loc=loc, input=value, ctx={"error": message})
        for loc, message, value in problems])


class Certificate(_Model):
    """One certificate entry: the hosts it serves (chosen by SNI), its certificate chain and its key (PEM)."""

    hosts: tuple[TlsHost, ...]
    cert: PemPath
    key: PemPath

    @model_validator(mode="after")
    def _some_hosts(self) -> Certificate:
        if not self.hosts:
            _fail_at([(("hosts",), "no hosts: list the names clients ask for (SNI) that this certificate serves, "
                       "e.g. [hello.example.com]", [])])
        repeated = sorted({h for h in self.hosts if self.hosts.count(h) > 1})
        if repeated:
            _fail_at([(("hosts",), f"{', '.join(repeated)} listed twice: list each host once", list(self.hosts))])
        return self


class GatewayTls(_Model):
    """gateway.tls: an HTTPS listener, its certificates, and which gateways serve it."""

    listen: Address = HostPort("127.0.0.1", 8443)
    redirect: Bool = False  # plain-HTTP requests for a host a certificate covers: 301 to https
    certificates: tuple[Certificate, ...] = ()
    # The gateway groups (node.cluster) that serve HTTPS and get the private keys; None: ferry's own gateway only.
    groups: tuple[GroupName, ...] | None = None

    @field_validator("certificates", mode="before")
    @classmethod
    def _none_as_empty(cls, value: Any) -> Any:
        return () if value is None else value  # `certificates:` with every entry commented out

    @model_validator(mode="after")
    def _hosts_once(self) -> GatewayTls:
        if not self.certificates:
            _fail_at([(("certificates",), "gateway.tls has no certificates: add one, e.g. {hosts: "
                       "[hello.example.com], cert: certs/hello.crt, key: certs/hello.key}, or remove gateway.tls",
                       [])])
        seen: dict[str, int] = {}
        problems = []
        for i, entry in enumerate(self.certificates):
            for j, host in enumerate(entry.hosts):
                if host in seen:
                    problems.append((("certificates", i, "hosts", j), f"{host} is also served by certificates"
                                     f"[{seen[host]}]: SNI chooses one certificate per host, keep it in one entry",
                                     host))
                seen.setdefault(host, i)
        if problems:
            _fail_at(problems)
        return self

    def hosts(self) -> frozenset[str]:
        return frozenset(h for entry in self.certificates for h in entry.hosts)


def secret_name(hosts: Sequence[str]) -> str:
    """The SDS secret of a certificate entry: named after its first host (unique across entries)."""
    return f"ferry-tls/{hosts[0]}"


def resolve(base_dir: Path, written: str) -> Path:
    """A path as routes.yaml writes it: ~ expanded, relative to the routes file's folder."""
    path = Path(written).expanduser()
    return path if path.is_absolute() else base_dir / path


def paths(tls: GatewayTls, base_dir: Path) -> list[Path]:
    """Every certificate and key file `tls` names."""
    return [resolve(base_dir, p) for entry in tls.certificates for p in (entry.cert, entry.key)]


@dataclass(frozen=True)
class KeyPair:
    """A certificate entry as read: what the gateway serves under secret `name` (xds/https.py)."""

    name: str
    hosts: tuple[str, ...]
    chain: bytes = field(repr=False)  # PEM, the leaf first
    key: bytes = field(repr=False)  # PEM
    not_after: datetime.datetime = field(compare=False)
    sha256: str = field(compare=False)  # the leaf's fingerprint

    def summary(self) -> dict:
        return {"name": self.name, "hosts": list(self.hosts), "not_after": self.not_after.isoformat(),
                "sha256": self.sha256}


def read_certificates(tls: GatewayTls, base_dir: Path, *, now: datetime.datetime | None = None
                      ) -> tuple[tuple[KeyPair, ...], list[Problem]]:
    """Every entry of `tls`, read and checked; the pairs only when there is no problem at all."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    pairs, problems = [], []
    for i, entry in enumerate(tls.certificates):
        loc = ("gateway", "tls", "certificates", i)
        pair = _read_pair(entry, base_dir, loc, now, problems)
        if pair is not None:
            pairs.append(KeyPair(secret_name(entry.hosts), entry.hosts, *pair))
    return (tuple(pairs) if not problems else ()), problems


def _read_pair(entry: Certificate, base_dir: Path, loc: Loc, now: datetime.datetime, problems: list[Problem]):
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    def problem(where: tuple, message: str) -> None:
        problems.append(Problem(format_path(loc + where), message))

    before = len(problems)

    chain_bytes = _read(resolve(base_dir, entry.cert), entry.cert, "certificate", lambda m: problem(("cert",), m))
    key_bytes = _read(resolve(base_dir, entry.key), entry.key, "key", lambda m: problem(("key",), m))
    if chain_bytes is None or key_bytes is None:
        return None
    try:
        chain = x509.load_pem_x509_certificates(chain_bytes)
    except ValueError:
        problem(("cert",), f"{entry.cert} holds no PEM certificate (-----BEGIN CERTIFICATE-----): give the "
                "certificate, then its intermediates, in PEM (from DER: openssl x509 -inform der -in FILE -out "
                "FILE.pem)")
        return None
    try:
        key = serialization.load_pem_private_key(key_bytes, password=None)
    except TypeError:
        problem(("key",), f"the key in {entry.key} is encrypted: the gateway needs it unencrypted "
                "(openssl pkey -in KEY -out KEY.plain), kept as safely as the routes file's folder")
        return None
    except (ValueError, UnsupportedAlgorithm):
        problem(("key",), f"{entry.key} holds no PEM private key (-----BEGIN PRIVATE KEY----- or BEGIN RSA/EC "
                "PRIVATE KEY): give the key the certificate was issued for, in PEM")
        return None
    leaf = chain[0]
    supported = (isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048) or (
        isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in ("secp256r1", "secp384r1", "secp521r1"))
    if not supported:
        problem(("key",), f"the key in {entry.key} is not one Envoy serves: use RSA of 2048 bits or more, or ECDSA "
                "on P-256, P-384 or P-521")
        return None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        problem(("key",), f"the key in {entry.key} does not match the certificate in {entry.cert} (another public "
                "key): give the key this certificate was issued for, or the certificate issued for this key (if "
                "you are replacing both, write the pair together)")
        return None
    not_after, not_before = leaf.not_valid_after_utc, leaf.not_valid_before_utc
    if not_after <= now:
        problem(("cert",), f"the certificate in {entry.cert} expired on {not_after:%Y-%m-%d %H:%M} UTC: renew it "
                "and replace the file (the gateway picks it up at once)")
        return None
    if not_before > now:
        problem(("cert",), f"the certificate in {entry.cert} is valid only from {not_before:%Y-%m-%d %H:%M} UTC: "
                "check this machine's clock, or use a certificate that is valid now")
        return None
    names = _dns_names(leaf)
    for j, host in enumerate(entry.hosts):
        if not any(covers(san, host) for san in names):
            shown = ", ".join(names[:_SAN_SHOWN]) + (f" and {len(names) - _SAN_SHOWN} more" if len(names) > _SAN_SHOWN
                                                     else "")
            have = f"it names {shown}" if names else "it has no DNS names (subjectAltName)"
            problem(("hosts", j), f"the certificate in {entry.cert} does not cover {host} ({have}): list only "
                    f"hosts it covers, or use a certificate issued for {host}")
    if len(problems) > before:
        return None
    return chain_bytes, key_bytes, not_after, leaf.fingerprint(hashes.SHA256()).hex()


def _read(path: Path, written: str, what: str, report) -> bytes | None:
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_PEM_BYTES + 1)
    except FileNotFoundError:
        report(f"no such file {path}: write the {what} there (PEM), or fix the path (relative to the routes "
               "file's folder)")
        return None
    except IsADirectoryError:
        report(f"{path} is a folder: give the {what} file's path")
        return None
    except OSError as err:
        report(f"cannot read {path}: {err.strerror}: make it readable by ferry")
        return None
    if len(data) > MAX_PEM_BYTES:
        report(f"{written} is larger than {MAX_PEM_BYTES // 1024} KiB, more than any PEM {what}: give the {what} "
               "file's path")
        return None
    return data


def _dns_names(certificate) -> list[str]:
    from cryptography import x509

    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [name.lower() for name in extension.value.get_values_for_type(x509.DNSName)]


def covers(san: str, host: str) -> bool:
    """Whether a certificate name covers a host entry: the same name, or a *.wildcard for one more label; a
    *.wildcard host only by the same wildcard."""
    if san == host:
        return True
    if not san.startswith("*.") or host.startswith("*."):
        return False
    label, dot, parent = host.partition(".")
    return bool(dot and label) and parent == san[2:]


def summaries(pairs: Sequence[KeyPair]) -> list[dict]:
    return [pair.summary() for pair in pairs]
