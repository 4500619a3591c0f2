"""routes.yaml gateway.accessLog and gateway.tracing: validation, what the HTTP connection manager carries, and
the listeners (and the collector's cluster) the controller re-puts when they change."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.trace.v3 import opentelemetry_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from ferry.routing.errors import ConfigError
from ferry.routing.loader import load_routes
from ferry.xds import https, resources as xds

from .reconcile_fakes import World, fixed

SERVICES = "services:\n  hello:\n    template: {endpoints: ['127.0.0.1:9001']}\n"


def _load(tmp_path: Path, gateway: str):
    return load_routes(tmp_path / "routes.yaml", text=f"gateway:\n{gateway}\n{SERVICES}")


def _error(tmp_path: Path, gateway: str) -> str:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, gateway)
    return str(caught.value)


# -- schema ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("written, value", [("stdout", "stdout"), ("off", "off"), ("'off'", "off"),
                                             ("logs/access.log", "logs/access.log"), ("/var/log/x.log", "/var/log/x.log")])
def test_access_log_takes_stdout_a_path_or_off(tmp_path: Path, written: str, value: str) -> None:
    assert _load(tmp_path, f"  accessLog: {written}").spec.gateway.accessLog == value


def test_access_log_is_off_by_default(tmp_path: Path) -> None:
    gateway = _load(tmp_path, "  domain: localhost").spec.gateway
    assert gateway.accessLog == "off" and gateway.tracing is None


@pytest.mark.parametrize("written", ["true", "''", "3", "[stdout]", "' stdout'"])
def test_a_bad_access_log_names_the_three_forms(tmp_path: Path, written: str) -> None:
    message = _error(tmp_path, f"  accessLog: {written}")
    assert "accessLog" in message and "stdout" in message and "file path" in message and "off" in message


def test_tracing_takes_a_collector_and_a_sampling_share(tmp_path: Path) -> None:
    tracing = _load(tmp_path, "  tracing: {otlp: 127.0.0.1:4317, sampling: 0.25}").spec.gateway.tracing
    assert (str(tracing.otlp), tracing.sampling) == ("127.0.0.1:4317", 0.25)
    assert _load(tmp_path, "  tracing: {otlp: collector.example:4317}").spec.gateway.tracing.sampling == 1.0
    assert _load(tmp_path, "  tracing: {otlp: 127.0.0.1:4317, sampling: 0}").spec.gateway.tracing.sampling == 0.0


@pytest.mark.parametrize("written, says", [
    ("{otlp: 127.0.0.1}", "port"),
    ("{sampling: 0.5}", "otlp"),
    ("{otlp: 127.0.0.1:4317, sampling: 1.5}", "from 0 to 1"),
    ("{otlp: 127.0.0.1:4317, sampling: -0.1}", "from 0 to 1"),
    ("{otlp: 127.0.0.1:4317, sampling: '0.5'}", "from 0 to 1"),
    ("{otlp: 127.0.0.1:4317, sampling: true}", "from 0 to 1"),
    ("{otlp: 127.0.0.1:4317, zipkin: x}", "zipkin"),
    ("127.0.0.1:4317", "otlp: HOST:PORT"),
])
def test_bad_tracing_is_explained(tmp_path: Path, written: str, says: str) -> None:
    message = _error(tmp_path, f"  tracing: {written}")
    assert "tracing" in message and says in message, message


# -- the HTTP connection manager ----------------------------------------------------------------------------------

# sha256 of the listeners as they were before request logs and traces existed: off (the default), the connection
# manager must stay byte for byte the same (no listener re-push, bench/convergence.py unchanged). Change these
# only with a deliberate change of the connection manager.
PLAIN = "5ed5af7727f3dfb42d644d16b4b45b95e3b9f5fa88f09da47bcb60c4f6c400a4"
INTERNAL = "55ef8ce9d3a7b702e33f8aa5dbe6de0e00df20c0ba95b5e0bfa74965d8e08d26"
HTTPS = "93b7715622e22d4a8f25ca6a066569d5b43b66a4c8fbfb3aefc6151a4d263435"


def test_off_the_listeners_are_byte_identical_to_before() -> None:
    def digest(resource) -> str:
        return hashlib.sha256(resource.body).hexdigest()
    assert digest(xds.listener("127.0.0.1", 8080)) == PLAIN
    assert digest(xds.listener("127.0.0.1", 8080, observe=xds.NO_OBSERVE)) == PLAIN
    assert digest(xds.listener("127.0.0.1", 8081, name=xds.INTERNAL_LISTENER_NAME, mark="internal")) == INTERNAL
    assert digest(https.https_listener("127.0.0.1", 8443, [https.TlsChain("c1", ("a.example.com",))])) == HTTPS
    manager = xds.http_manager()
    assert not manager.access_log and not manager.HasField("tracing")


def _manager(resource) -> hcm_pb2.HttpConnectionManager:
    listener = listener_pb2.Listener.FromString(resource.body)
    manager = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    return manager


def test_the_access_log_is_json_with_named_fields_only() -> None:
    manager = _manager(xds.listener("127.0.0.1", 8080, observe=xds.Observe(access_log="/tmp/a.log")))
    (log,) = manager.access_log
    assert log.name == "envoy.access_loggers.file"
    config = file_pb2.FileAccessLog()
    log.typed_config.Unpack(config)
    assert config.path == "/tmp/a.log"
    fields = dict(config.log_format.json_format.items())
    assert fields == xds.ACCESS_LOG_FORMAT
    assert {"time", "host", "method", "path", "status", "duration_ms", "bytes_received", "bytes_sent", "revision",
            "instance", "request_id", "response_flags"} <= fields.keys()
    commands = " ".join(fields.values()).lower()
    for secret in ("authorization", "cookie", "%req(:path)%", "%req_without_query", "%dynamic_metadata"):
        assert secret not in commands
    assert not manager.HasField("tracing")


def test_the_access_log_to_stdout() -> None:
    (log,) = xds.http_manager(observe=xds.Observe(access_log="stdout")).access_log
    assert log.name == "envoy.access_loggers.stdout"
    config = stream_pb2.StdoutAccessLog()
    log.typed_config.Unpack(config)
    assert dict(config.log_format.json_format.items()) == xds.ACCESS_LOG_FORMAT


def test_tracing_sends_opentelemetry_spans_tagged_with_the_revision() -> None:
    manager = xds.http_manager(observe=xds.Observe(tracing=True, sampling=0.05))
    assert not manager.access_log
    tracing = manager.tracing
    assert tracing.provider.name == "envoy.tracers.opentelemetry"
    config = opentelemetry_pb2.OpenTelemetryConfig()
    tracing.provider.typed_config.Unpack(config)
    assert config.grpc_service.envoy_grpc.cluster_name == xds.OTLP_CLUSTER
    assert config.service_name == "ferry-gateway"
    assert tracing.random_sampling.value == pytest.approx(5.0)
    assert {(t.tag, t.request_header.name) for t in tracing.custom_tags} == {
        ("ferry.revision", "ferry-revision"), ("ferry.service", "ferry-service")}


@pytest.mark.parametrize("host, kind", [("127.0.0.1", cluster_pb2.Cluster.STATIC),
                                        ("collector.example", cluster_pb2.Cluster.STRICT_DNS)])
def test_the_collector_cluster_speaks_http2(host: str, kind: int) -> None:
    cluster = cluster_pb2.Cluster.FromString(xds.otlp_cluster(host, 4317).body)
    assert cluster.name == xds.OTLP_CLUSTER and cluster.type == kind
    address = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (address.address, address.port_value) == (host, 4317)
    options = http_protocol_options_pb2.HttpProtocolOptions()
    cluster.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].Unpack(options)
    assert options.explicit_http_config.HasField("http2_protocol_options")


# -- the controller ---------------------------------------------------------------------------------------------


@pytest.fixture
async def world(tmp_path):
    w = World(tmp_path)
    await w.controller.start()
    yield w
    await w.close()


async def _gateway(world: World, lines: str) -> None:
    text = ("gateway: {listen: 127.0.0.1:8080, domain: test, internal: 127.0.0.1:8081" + lines + "}\n"
            f"services:\n  hello: {{template: {fixed(9001)}}}\n")
    world.path.write_text(text)
    await world.source.apply(text)


async def test_every_listener_follows_the_access_log_and_tracing(world: World, tmp_path: Path):
    await _gateway(world, "")
    listeners = world.entries(xds.LISTENER)
    plain = (listeners[xds.LISTENER_NAME], listeners[xds.INTERNAL_LISTENER_NAME])
    assert hashlib.sha256(plain[0].body).hexdigest() == PLAIN
    assert xds.OTLP_CLUSTER not in world.entries(xds.CLUSTER)

    await _gateway(world, ", accessLog: logs/requests.log")
    for name in (xds.LISTENER_NAME, xds.INTERNAL_LISTENER_NAME):
        (log,) = _manager(world.entries(xds.LISTENER)[name]).access_log
        config = file_pb2.FileAccessLog()
        log.typed_config.Unpack(config)
        assert config.path == str(tmp_path / "logs" / "requests.log")  # made absolute against the file's folder
    assert (tmp_path / "logs").is_dir()

    await _gateway(world, ", accessLog: stdout, tracing: {otlp: '127.0.0.1:4317', sampling: 0.5}")
    assert xds.OTLP_CLUSTER in world.entries(xds.CLUSTER)
    for name in (xds.LISTENER_NAME, xds.INTERNAL_LISTENER_NAME):
        manager = _manager(world.entries(xds.LISTENER)[name])
        assert manager.access_log[0].name == "envoy.access_loggers.stdout"
        assert manager.tracing.random_sampling.value == 50.0

    await _gateway(world, "")  # both off: the listeners as they were, the collector's cluster gone
    listeners = world.entries(xds.LISTENER)
    assert (listeners[xds.LISTENER_NAME], listeners[xds.INTERNAL_LISTENER_NAME]) == plain
    assert xds.OTLP_CLUSTER not in world.entries(xds.CLUSTER)
