"""The values a routes file is made of (addresses, durations, names), each with its own error message.

Scalars are strict: YAML already types them, so `percent: "90"` is a mistake worth reporting rather
than something to coerce. Every message says what was wrong and how to write it instead.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
from decimal import Decimal
from typing import Annotated, NamedTuple

from pydantic import AfterValidator, Field, PlainSerializer, PlainValidator, Strict

from .durations import parse_duration
from .messages import describe
from .names import dns_label, host_name

MAX_TIMEOUT_S = 3600.0
# Knative's TargetMin: the smallest per-instance target, so a tiny utilization cannot divide by zero.
TARGET_MIN = 0.01
# Knative's WindowMin and WindowMax: the bounds of the stable window; the scale-down delay shares the maximum.
MIN_WINDOW_S = 6.0
MAX_WINDOW_S = 3600.0
# A gradual rollout moves traffic in steps of at least 1 s (Knative's rollout-duration), and takes at least two.
MIN_ROLLOUT_DURATION_S = 2.0
MIN_ROLLOUT_INTERVAL_S = 1.0
# Set by ferry for every instance (Knative's runtime contract); a template may not override them.
RESERVED_ENV = frozenset({"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"})


class HostPort(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, value: object) -> HostPort:
        """'127.0.0.1:8080', 'localhost:9001' or '[::1]:8080'; raises ValueError saying how to write it."""
        if isinstance(value, HostPort):
            return value
        m = _HOST_PORT.fullmatch(value) if isinstance(value, str) else None
        if m is not None and 1 <= int(m["port"]) <= 65535:  # the fast path, taken by every valid endpoint
            host = m["host"]
            if host is not None and (_IPV4.fullmatch(host) or _DNS_NAME.fullmatch(host)):
                return cls(host, int(m["port"]))
            if host is None and _is_ipv6(m["ip6"]):
                return cls(m["ip6"], int(m["port"]))
        raise ValueError(_bad_host_port(value))


_HOST_PORT = re.compile(r"(?:\[(?P<ip6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]/\s]+)):(?P<port>\d{1,5})")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_DNS_LABEL = r"[A-Za-z0-9](?:[-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"(?=.{{1,253}}$)(?![\d.]+$){_DNS_LABEL}(?:\.{_DNS_LABEL})*")  # all digits: a bad IPv4


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
        return True
    except ValueError:
        return False


def _bad_host_port(value: object) -> str:
    """Why `value` is not host:port, and how to write it."""
    example = "e.g. 127.0.0.1:8080"
    if not isinstance(value, str):
        shown = str(value).lower() if isinstance(value, bool) else repr(value)
        return f"expected host:port, got {shown}: write it as a string, {example}"
    if "://" in value:
        return f"expected host:port, got {value!r}: drop the scheme, {example}"
    host, sep, port = value.rpartition(":")
    if sep and not host:
        return f"expected host:port, got {value!r}: add the host, e.g. 127.0.0.1{value}"
    if not sep or host.endswith(":") or (value.startswith("[") and value.endswith("]")):
        return f"expected host:port, got {value!r}: add the port, {example}"
    if not port.isdigit():
        return f"port {port!r} in {value!r} is not a number: write host:port, {example}"
    if not 1 <= int(port) <= 65535:
        return f"port {int(port)} in {value!r} is out of range: use a port from 1 to 65535"
    if ":" in host and not host.startswith("["):
        return f"IPv6 addresses need brackets: write '[{host}]:{port}'"
    return f"invalid host {host!r} in {value!r}: use an IP address or a DNS name"


def _seconds_text(seconds: float) -> str:
    """3600 -> '1h (3600s)', 6 -> '6s': a bound the way the user writes it."""
    whole = f"{seconds:g}s"
    return f"{seconds / 3600:g}h ({whole})" if seconds >= 3600 and seconds % 3600 == 0 else whole


def _duration(
    name: str,
    example: str,
    *,
    minimum: float = 0.0,
    above_minimum: bool = False,
    maximum: float | None = None,
    whole_seconds: bool = False,
    why_minimum: str = "",
) -> PlainValidator:
    """A duration field in seconds: parsed like `timeout` (300s, 1m30s, a bare number of seconds), then bounded.

    `above_minimum` makes the minimum itself invalid; `whole_seconds` refuses fractions of a second,
    as Knative does for its autoscaling windows (it takes them with second precision only);
    `why_minimum` says, in the message, why the minimum is what it is.
    """
    why = f" ({why_minimum})" if why_minimum else ""

    def check(value: object) -> float:
        seconds = parse_duration(value)
        if not math.isfinite(seconds):
            raise ValueError(f"{name} must be a finite duration, got {value!r}: e.g. {example}")
        if whole_seconds:  # to the nanosecond, as Go reads durations: 0.1h is 360s, not 360.00000000000006s
            seconds = round(seconds * 1e9) / 1e9
        if above_minimum and seconds <= minimum:
            raise ValueError(f"{name} must be greater than {minimum:g}, got {value!r}: e.g. {example}")
        if seconds < minimum:
            if minimum == 0:
                raise ValueError(f"{name} cannot be negative, got {value!r}: e.g. {example}")
            raise ValueError(
                f"{name} {value!r} is shorter than the minimum of {_seconds_text(minimum)}{why}: raise it, e.g. {example}"
            )
        if maximum is not None and seconds > maximum:
            raise ValueError(f"{name} {value!r} is longer than the maximum of {_seconds_text(maximum)}: lower it")
        if whole_seconds and not seconds.is_integer():
            low = math.floor(seconds)
            raise ValueError(
                f"{name} {value!r} is not a whole number of seconds (Knative takes it with second precision only): "
                f"round it to {low}s or {low + 1}s"
            )
        return seconds

    return PlainValidator(check)


def _burst_capacity(value: float) -> float:
    if value < 0 and value != -1:
        raise ValueError(f"must be 0 or more, or -1 for unlimited, got {value:g}")
    return value


def _command(argv: tuple[str, ...]) -> tuple[str, ...]:
    if not argv or not argv[0]:
        raise ValueError("command is empty: give the program and its arguments, e.g. [python, app.py]")
    return argv


def _endpoints(endpoints: tuple[HostPort, ...]) -> tuple[HostPort, ...]:
    if not endpoints:
        raise ValueError("endpoints is empty: list at least one host:port, e.g. [127.0.0.1:9001]")
    if len(set(endpoints)) != len(endpoints):
        twice = next(str(e) for i, e in enumerate(endpoints) if e in endpoints[:i])
        raise ValueError(f"endpoint {twice} is listed twice: list each endpoint once")
    return endpoints


def _no_nul(text: str) -> str:
    """The OS cannot pass a NUL byte in an argument or an environment value: the process would never start."""
    if "\0" in text:
        raise ValueError(f"{describe(text)} holds a NUL byte (\\0), which no program can receive: remove it")
    return text


def _endpoint(address: HostPort) -> HostPort:
    """An endpoint names one instance. Unspecified addresses (0.0.0.0, ::) are not one: Linux connects them to the
    local host, so any of ferry's listeners, Envoy's admin included, would be published. Link-local addresses
    (cloud metadata services live at 169.254.169.254) are never a revision's instance: publishing one through the
    gateway would hand them to anyone who can reach it. An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is judged as
    the IPv4 address it reaches."""
    ip = ip_of(address.host)
    if ip is None:
        return address
    if ip.is_unspecified:
        raise ValueError(f"endpoint {address} is an unspecified address (0.0.0.0, ::): connecting to it reaches this "
                         "machine itself, ferry's own listeners included, and the gateway would publish them to its "
                         "clients; give the instance's own address")
    if ip.is_link_local:
        raise ValueError(f"endpoint {address} is a link-local address (169.254.0.0/16, fe80::/10: cloud metadata "
                         "services live there): the gateway would publish it to its clients; give the instance's "
                         "own address")
    return address


@functools.lru_cache(maxsize=4096)  # endpoints repeat hosts (20,000 endpoints at 10,000 services, few hosts)
def ip_of(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address `host` is, an IPv4-mapped IPv6 one (::ffff:a.b.c.d) as the IPv4 address it reaches; None for
    a name."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    mapped = ip.ipv4_mapped if ip.version == 6 else None
    return mapped if mapped is not None else ip


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    ip = ip_of(host)
    return ip is not None and ip.is_loopback


def _env_name(name: str) -> str:
    if name in RESERVED_ENV:
        raise ValueError(f"{name} is set by ferry for every instance: remove it from env")
    if not name or "=" in name or "\0" in name:
        raise ValueError(f"invalid environment variable name {name!r}: use letters, digits and '_', e.g. MESSAGE")
    return name


def _http_path(path: str) -> str:
    if not path.startswith("/") or any(c.isspace() for c in path):
        fix = f": write '/{path.lstrip()}'" if not path.startswith("/") and path.strip() else ""
        raise ValueError(f"readiness path {path!r} must be an absolute URL path starting with '/'{fix}")
    return path


def _rollout_steps(steps: tuple[int, ...]) -> tuple[int, ...]:
    if not steps:
        raise ValueError(
            "steps is empty: list the percents of main traffic the new revision gets at each step, "
            "e.g. [5, 25, 50, 100], or remove steps for that default"
        )
    for i in range(1, len(steps)):
        if steps[i] <= steps[i - 1]:
            fixed = ", ".join(map(str, sorted(set(steps))))
            raise ValueError(
                f"steps must increase strictly, but steps[{i}] ({steps[i]}) is not greater than "
                f"steps[{i - 1}] ({steps[i - 1]}): sort them and drop repeats, e.g. [{fixed}]"
            )
    return steps


_WHITESPACE = re.compile(r"\s")  # str.isspace's characters, found in C


def _image(image: str) -> str:
    if not image:
        raise ValueError("image is empty: give an OCI image reference, e.g. ghcr.io/me/hello:1.0")
    if _WHITESPACE.search(image):
        raise ValueError(
            f"image {image!r} has whitespace; an OCI image reference has none: write it as one word, "
            "e.g. ghcr.io/me/hello:1.0 (put arguments in args)"
        )
    return image


# A Kubernetes namespace is a DNS-1123 label (digits may come first, unlike service names).
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def _namespace(namespace: str) -> str:
    if len(namespace) <= 63 and _NAMESPACE.fullmatch(namespace):
        return namespace
    hint = f" (try '{namespace.lower()}')" if _NAMESPACE.fullmatch(namespace.lower()) and len(namespace) <= 63 else ""
    raise ValueError(
        f"invalid namespace {namespace!r}{hint}: a Kubernetes namespace is a DNS-1123 label: lowercase letters, "
        "digits and '-', starting and ending with a letter or digit, at most 63 characters, e.g. apps"
    )


def _not_empty(what: str, example: str) -> AfterValidator:
    def check(value: str) -> str:
        if not value.strip():
            raise ValueError(f"{what} is empty: {example}")
        return value

    return AfterValidator(check)


# Kubernetes resource quantities (k8s.io/apimachinery resource.Quantity): a number with an optional binary
# (Ki, Mi, ...), decimal (m, k, M, ...) or exponent (e3) suffix.
_QUANTITY = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?|\.[0-9]+)(?P<suffix>m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei|[eE][+-]?[0-9]+)?")
_SUFFIX_VALUE = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    **{s: Decimal(1000) ** (i + 1) for i, s in enumerate("kMGTPE")},
    **{f"{s}i": Decimal(1024) ** (i + 1) for i, s in enumerate("KMGTPE")},
}
QUANTITY_EXAMPLES = "e.g. 500m (half a CPU), 2 (CPUs) or 256Mi (memory, 256 MiB)"


def _quantity(value: object) -> str:
    """A Kubernetes quantity, kept as the text Kubernetes reads: 1 and "1" are the same quantity."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"expected a Kubernetes quantity, got {describe(value)}: {QUANTITY_EXAMPLES}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"expected a finite Kubernetes quantity, got {value!r}: {QUANTITY_EXAMPLES}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"a quantity cannot be negative, got {value!r}: {QUANTITY_EXAMPLES}")
        text = str(value) if isinstance(value, int) else format(Decimal(repr(value)), "f")
        text = text.removesuffix(".0") if "." in text and text.endswith(".0") else text
    else:
        text = value
    if _QUANTITY.fullmatch(text):
        return text
    raise ValueError(f"{text!r} is not a Kubernetes quantity{_quantity_hint(text)}: {QUANTITY_EXAMPLES}")


def _quantity_hint(text: str) -> str:
    """256MB -> 256M or 256Mi; 256mi -> 256Mi; -1 -> not negative."""
    if text.startswith("-"):
        return " (it cannot be negative)"
    m = re.fullmatch(r"([0-9.]+)\s*([a-zA-Z]*)", text.strip())
    if m is None:
        return ""
    number, unit = m.groups()
    if unit.lower() in ("kb", "mb", "gb", "tb", "pb", "eb"):
        decimal = unit[0].upper() if unit[0].lower() != "k" else "k"
        return f" (write {number}{decimal} for {unit.upper()} or {number}{unit[0].upper()}i for {unit[0].upper()}iB)"
    if unit.lower() in ("ki", "mi", "gi", "ti", "pi", "ei", "kib", "mib", "gib", "tib", "pib", "eib"):
        return f" (write {number}{unit[0].upper()}i: the suffixes are case-sensitive)"
    if text != text.strip() or " " in text:
        return " (remove the spaces)"
    return ""


def quantity_value(text: str) -> Decimal:
    """The amount a valid quantity stands for (500m -> 0.5, 1Ki -> 1024), to compare requests with limits."""
    m = _QUANTITY.fullmatch(text)
    if m is None:
        raise ValueError(f"{text!r} is not a Kubernetes quantity")
    suffix = m["suffix"] or ""
    if suffix[:1] in ("e", "E"):
        return Decimal(m["number"]) * Decimal(10) ** int(suffix[1:])
    return Decimal(m["number"]) * _SUFFIX_VALUE[suffix]


def _label(what: str, max_length: int = 63) -> AfterValidator:
    return AfterValidator(lambda value: dns_label(value, what, max_length))


def _host(what: str) -> AfterValidator:
    return AfterValidator(lambda value: host_name(value, what))


NonNegativeInt = Annotated[int, Strict(), Field(ge=0)]
Percent = Annotated[int, Strict(), Field(ge=0, le=100)]
# Scalars of template.scale: Knative's autoscaling ranges, the same ones ferry.autoscaler.decision.Settings checks.
# Numbers must be finite: YAML's .inf and .nan would overflow or poison the autoscaler's arithmetic.
ScaleTarget = Annotated[float, Strict(), Field(ge=TARGET_MIN, allow_inf_nan=False)]
Utilization = Annotated[float, Strict(), Field(ge=1, le=100, allow_inf_nan=False)]  # Knative's range; 0.7 is a slip
ActivationScale = Annotated[int, Strict(), Field(ge=1)]
PanicWindowPercent = Annotated[float, Strict(), Field(ge=1, le=100, allow_inf_nan=False)]
PanicThreshold = Annotated[float, Strict(), Field(ge=110, le=1000, allow_inf_nan=False)]
ScaleRate = Annotated[float, Strict(), Field(gt=1, allow_inf_nan=False)]
BurstCapacity = Annotated[float, Strict(), Field(allow_inf_nan=False), AfterValidator(_burst_capacity)]
Str = Annotated[str, Strict()]
OsStr = Annotated[str, Strict(), AfterValidator(_no_nul)]  # handed to the OS: an argument, an environment value
Bool = Annotated[bool, Strict()]
Address = Annotated[HostPort, PlainValidator(HostPort.parse), PlainSerializer(str, return_type=str)]
Duration = Annotated[float, _duration("timeout", "300s", above_minimum=True, maximum=MAX_TIMEOUT_S)]
ResponseStartTimeout = Annotated[
    float, _duration("responseStartTimeout", "30s", above_minimum=True, maximum=MAX_TIMEOUT_S)
]
IdleTimeout = Annotated[float, _duration("idleTimeout", "0s (none) or 60s", maximum=MAX_TIMEOUT_S)]
StableWindow = Annotated[
    float, _duration("stableWindow", "60s", minimum=MIN_WINDOW_S, maximum=MAX_WINDOW_S, whole_seconds=True)
]
ScaleDownDelay = Annotated[float, _duration("scaleDownDelay", "0s or 5m", maximum=MAX_WINDOW_S, whole_seconds=True)]
GracePeriod = Annotated[float, _duration("zeroGracePeriod", "30s")]
# rollout: and its analysis:
RolloutStep = Annotated[int, Strict(), Field(ge=1, le=100)]  # percent of main traffic to the new revision
RolloutSteps = Annotated[tuple[RolloutStep, ...], AfterValidator(_rollout_steps)]
RolloutInterval = Annotated[float, _duration("interval", "30s", minimum=MIN_ROLLOUT_INTERVAL_S)]
RolloutDuration = Annotated[
    float,
    _duration(
        "duration",
        "120s",
        minimum=MIN_ROLLOUT_DURATION_S,
        why_minimum="a gradual rollout needs at least one 1s step after the first",
    ),
]
def _success_rate(percent: float) -> float:
    if 0 < percent < 1:
        raise ValueError(f"successRate {percent:g} is a percentage: write {percent * 100:g} for {percent * 100:g}%")
    return percent


# Percent of non-5xx answers; 0 judges nothing; a fraction below 1 is a slip for a percentage.
SuccessRate = Annotated[float, Strict(), Field(ge=0, le=100, allow_inf_nan=False), AfterValidator(_success_rate)]
LatencyLimit = Annotated[float, _duration("maxLatencyP99", "500ms", above_minimum=True, maximum=MAX_TIMEOUT_S)]
FailureLimit = Annotated[int, Strict(), Field(ge=1)]
ServiceName = Annotated[Str, _label("service name")]
RevisionName = Annotated[Str, _label("revision name")]
# Generated names (<service>-00001) of a 63-character service name are longer than one DNS label.
RevisionRef = Annotated[Str, _label("revision name", max_length=253)]
Tag = Annotated[Str, _label("tag")]
Host = Annotated[Str, _host("host")]
Domain = Annotated[Str, _host("domain")]
EnvName = Annotated[Str, AfterValidator(_env_name)]
Command = Annotated[tuple[OsStr, ...], AfterValidator(_command)]
Endpoint = Annotated[Address, AfterValidator(_endpoint)]
Endpoints = Annotated[tuple[Endpoint, ...], AfterValidator(_endpoints)]
HttpPath = Annotated[Str, AfterValidator(_http_path)]
# backend: and the Kubernetes-only template fields
Image = Annotated[Str, AfterValidator(_image)]
Args = tuple[OsStr, ...]
Port = Annotated[int, Strict(), Field(ge=1, le=65535)]
Quantity = Annotated[str, PlainValidator(_quantity)]
Namespace = Annotated[Str, AfterValidator(_namespace)]
Kubeconfig = Annotated[Str, _not_empty("kubeconfig", "give the path of a kubeconfig file, e.g. ~/.kube/config, or remove it")]
KubeContext = Annotated[Str, _not_empty("context", "give a context name from the kubeconfig, e.g. kind-ferry, or remove it")]
