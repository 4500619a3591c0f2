"""gateway.tls in routes.yaml: the schema, and reading its certificates (made here with `cryptography`): every bad
input is one problem at its own line and YAML path, saying why and how to fix it; nothing of a key is ever quoted."""

from __future__ import annotations

import datetime

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ferry.routing import ConfigError, load_routes
from ferry.routing.certificates import covers, read_certificates
from ferry.xds.resources import HttpsRedirect

from .helpers import write_routes
from .tls_certs import Ca, fingerprint, write_pair

CA = Ca.make()
HELLO = CA.issue("hello.example.com", "*.example.com")


def tls_file(tmp_path, certificates: str, extra: str = "") -> str:
    """A routes file with gateway.tls: `certificates` (lines indented 6) under certificates:, `extra` lines (indented
    4) before it; writes certs/hello.{crt,key}."""
    write_pair(tmp_path / "certs", "hello", HELLO)
    lines = ["gateway:", "  listen: 127.0.0.1:8080", "  tls:", "    listen: 127.0.0.1:8443",
             *(extra.splitlines() if extra else []), "    certificates:",
             *(certificates.splitlines() if certificates else []), "services: {}"]
    return "\n".join(lines) + "\n"


ENTRY = '      - {hosts: [hello.example.com, "*.example.com"], cert: certs/hello.crt, key: certs/hello.key}'


def one_problem(tmp_path, text: str):
    path = write_routes(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_routes(path)
    (problem,) = info.value.problems
    return problem


def test_a_good_pair_loads_with_its_bytes_and_fingerprint(tmp_path):
    loaded = load_routes(write_routes(tmp_path, tls_file(tmp_path, ENTRY)))
    tls = loaded.spec.gateway.tls
    assert tls.listen.port == 8443 and tls.redirect is False and tls.groups is None
    (pair,) = loaded.certificates
    assert pair.name == "ferry-tls/hello.example.com" and pair.hosts == ("hello.example.com", "*.example.com")
    assert (pair.chain, pair.key) == HELLO and pair.sha256 == fingerprint(HELLO[0])
    assert "BEGIN" not in repr(pair)  # the key never shows in a repr or a log line


def test_paths_are_relative_to_the_routes_file_and_absolute_ones_work(tmp_path):
    write_pair(tmp_path / "elsewhere", "x", HELLO)
    text = tls_file(tmp_path, f"      - {{hosts: [hello.example.com], cert: {tmp_path}/elsewhere/x.crt, "
                              "key: ../" + tmp_path.name + "/certs/hello.key}")
    assert load_routes(write_routes(tmp_path, text)).certificates[0].chain == HELLO[0]


def test_missing_file(tmp_path):
    text = tls_file(tmp_path, "      - {hosts: [hello.example.com], cert: certs/nope.crt, key: certs/hello.key}")
    problem = one_problem(tmp_path, text)
    assert problem.path == "gateway.tls.certificates[0].cert" and problem.line == 6
    assert f"no such file {tmp_path}/certs/nope.crt" in problem.message and "fix the path" in problem.message


def test_a_key_that_does_not_match_its_certificate(tmp_path):
    write_pair(tmp_path / "certs", "other", CA.issue("other.test"))
    text = tls_file(tmp_path, "      - {hosts: [hello.example.com], cert: certs/hello.crt, key: certs/other.key}")
    problem = one_problem(tmp_path, text)
    assert problem.path == "gateway.tls.certificates[0].key"
    assert "does not match the certificate in certs/hello.crt" in problem.message
    assert "give the key this certificate was issued for" in problem.message
    assert "PRIVATE" not in problem.message


def test_hosts_the_certificate_does_not_cover(tmp_path):
    text = tls_file(tmp_path, "      - {hosts: [hello.example.com, a.b.example.com, hello.other.test, '*.other.test'],"
                              " cert: certs/hello.crt, key: certs/hello.key}")
    path = write_routes(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_routes(path)
    paths = [p.path for p in info.value.problems]
    assert paths == [f"gateway.tls.certificates[0].hosts[{i}]" for i in (1, 2, 3)]
    first = info.value.problems[0].message
    assert "does not cover a.b.example.com (it names hello.example.com, *.example.com)" in first
    assert "list only hosts it covers" in first


def test_tls_without_certificates(tmp_path):
    for certificates in ("", "      []"):
        problem = one_problem(tmp_path, tls_file(tmp_path, certificates))
        assert problem.path == "gateway.tls.certificates"
        assert "no certificates: add one, e.g. {hosts:" in problem.message and "or remove gateway.tls" in problem.message


@pytest.mark.parametrize("listen, expected", [
    ("8443", "gateway.tls.listen"),
    ("127.0.0.1:99999", "gateway.tls.listen"),
    ("127.0.0.1:8080", "gateway.tls.listen is gateway.listen (127.0.0.1:8080): HTTPS needs a listener of its own"),
])
def test_bad_listen(tmp_path, listen, expected):
    text = tls_file(tmp_path, ENTRY).replace("listen: 127.0.0.1:8443", f"listen: {listen}")
    problem = one_problem(tmp_path, text)
    assert problem.path == "gateway.tls.listen" and problem.line == 4
    assert expected in f"{problem.path}: {problem.message}"


def test_schema_mistakes_each_at_their_place(tmp_path):
    text = tls_file(tmp_path, """      - {hosts: [hello.example.com, Hello.example.com], cert: certs/hello.crt, key: certs/hello.key}
      - {hosts: ["x*.example.com"], cert: "", key: certs/hello.key, ca: nope}""", extra="    redirect: sure\n"
                                                                                    "    groups: [edge, 'a b']")
    path = write_routes(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_routes(path)
    got = {p.path: p.message for p in info.value.problems}
    assert set(got) == {"gateway.tls.redirect", "gateway.tls.groups[1]", "gateway.tls.certificates[0].hosts[1]",
                        "gateway.tls.certificates[1].hosts[0]", "gateway.tls.certificates[1].cert",
                        "gateway.tls.certificates[1].ca"}
    assert "lowercase" in got["gateway.tls.certificates[0].hosts[1]"]
    assert "a wildcard is a whole leftmost label" in got["gateway.tls.certificates[1].hosts[0]"]
    assert "node.cluster" in got["gateway.tls.groups[1]"]


def test_a_host_in_two_entries(tmp_path):
    write_pair(tmp_path / "certs", "b", CA.issue("hello.example.com"))
    text = tls_file(tmp_path, ENTRY + "\n      - {hosts: [hello.example.com], cert: certs/b.crt, key: certs/b.key}")
    problem = one_problem(tmp_path, text)
    assert problem.path == "gateway.tls.certificates[1].hosts[0]"
    assert "also served by certificates[0]" in problem.message


def test_expired_not_yet_valid_encrypted_and_unsupported(tmp_path):
    write_pair(tmp_path / "certs", "old", CA.issue("old.test", days=-1, not_before_days=-5))
    write_pair(tmp_path / "certs", "future", CA.issue("future.test", days=9, not_before_days=2))
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    write_pair(tmp_path / "certs", "small", CA.issue("small.test", key=small))
    encrypted_key = ec.generate_private_key(ec.SECP256R1())
    write_pair(tmp_path / "certs", "enc", (CA.issue("enc.test", key=encrypted_key)[0], encrypted_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"))))
    entries = "\n".join(f"      - {{hosts: [{n}.test], cert: certs/{n}.crt, key: certs/{n}.key}}"
                        for n in ("old", "future", "small", "enc"))
    path = write_routes(tmp_path, tls_file(tmp_path, entries))
    with pytest.raises(ConfigError) as info:
        load_routes(path)
    messages = [f"{p.path}: {p.message}" for p in info.value.problems]
    assert "certificates[0].cert: the certificate in certs/old.crt expired on" in messages[0]
    assert "certificates[1].cert: the certificate in certs/future.crt is valid only from" in messages[1]
    assert "certificates[2].key: the key in certs/small.key is not one Envoy serves" in messages[2]
    assert "certificates[3].key: the key in certs/enc.key is encrypted" in messages[3]


def test_not_pem(tmp_path):
    path = write_routes(tmp_path, tls_file(tmp_path, ENTRY))
    (tmp_path / "certs" / "hello.crt").write_bytes(b"\x30\x82 DER, not PEM")
    problem = one_problem(tmp_path, path.read_text())
    assert problem.path == "gateway.tls.certificates[0].cert" and "holds no PEM certificate" in problem.message
    (tmp_path / "certs" / "hello.crt").write_bytes(HELLO[0])
    (tmp_path / "certs" / "hello.key").write_text("not a key")
    problem = one_problem(tmp_path, path.read_text())
    assert problem.path == "gateway.tls.certificates[0].key" and "holds no PEM private key" in problem.message


def test_an_unchanged_tls_block_is_not_read_again_and_a_changed_one_is(tmp_path):
    path = write_routes(tmp_path, tls_file(tmp_path, ENTRY))
    first = load_routes(path)
    write_pair(tmp_path / "certs", "hello", CA.issue("other.test"))  # would not cover the hosts
    services_only = path.read_text().replace("services: {}", "services:\n  a: {template: {endpoints: [127.0.0.1:9]}}")
    assert load_routes(path, services_only, previous=first).certificates is first.certificates
    with pytest.raises(ConfigError):
        load_routes(path, services_only.replace("8443", "8444"), previous=first)


def test_read_certificates_reports_every_entry_and_returns_no_pair_then(tmp_path):
    loaded = load_routes(write_routes(tmp_path, tls_file(tmp_path, ENTRY)))
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=100)
    pairs, problems = read_certificates(loaded.spec.gateway.tls, tmp_path, now=later)
    assert pairs == () and [p.path for p in problems] == ["gateway.tls.certificates[0].cert"]


def test_coverage_rules():
    assert covers("hello.example.com", "hello.example.com")
    assert covers("*.example.com", "a.example.com") and not covers("*.example.com", "a.b.example.com")
    assert not covers("*.example.com", "example.com") and covers("*.example.com", "*.example.com")
    assert not covers("a.example.com", "*.example.com")
    redirect = HttpsRedirect(frozenset({"hello.example.com", "*.other.test"}), 8443)
    assert redirect.covers("hello.example.com") and redirect.covers("x.other.test")
    assert not redirect.covers("other.test") and not redirect.covers("a.b.other.test")
