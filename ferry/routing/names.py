"""Name rules shared with Kubernetes and DNS, so a routes file moves to Knative without renames.

Each check returns the value or raises ValueError with a message that says what a valid name looks like.
"""

from __future__ import annotations

import re

_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_HOST_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
LABEL_RULE = (
    "lowercase letters, digits and '-', starting with a letter and ending with a letter or digit, at most 63 characters"
)


def dns_label(value: str, what: str, max_length: int = 63) -> str:
    """A DNS-1035 label: services, tags and revisions appear as the first label of a host name."""
    if len(value) <= max_length and _LABEL.fullmatch(value):
        return value
    hint = f" (try '{value.lower()}')" if value != value.lower() and _LABEL.fullmatch(value.lower()) else ""
    rule = LABEL_RULE if max_length == 63 else LABEL_RULE.replace("63", str(max_length))
    return _invalid(f"invalid {what} {value!r}{hint}: use {rule}")


def host_name(value: str, what: str) -> str:
    """A DNS name (RFC 1123) without a port: what a client puts in the Host header, minus the port."""
    if ":" in value and not value.startswith("["):
        bare = value.rsplit(":", 1)[0]
        return _invalid(f"{what} {value!r} has a port; a host here is a name without a port: write {bare!r}")
    if value != value.lower():
        return _invalid(f"invalid {what} {value!r}: host names are lowercase here: write {value.lower()!r}")
    labels = value.split(".")
    if len(value) > 253 or not all(len(x) <= 63 and _HOST_LABEL.fullmatch(x) for x in labels):
        return _invalid(
            f"invalid {what} {value!r}: use a DNS name, dot-separated labels of lowercase letters, digits "
            "and '-' (each at most 63 characters, 253 in all), e.g. hello.example.com"
        )
    return value


def _invalid(message: str) -> str:
    raise ValueError(message)
