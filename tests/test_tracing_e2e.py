"""Traces through a real Envoy: `gateway.tracing: {otlp: HOST:PORT, sampling: S}` makes the gateway send OTLP/gRPC
spans to a collector, here a small TraceService/Export receiver in the test process, with the service and the
revision that answered each request."""

from __future__ import annotations

import json
import os
import threading
from concurrent import futures
from dataclasses import dataclass

import aiohttp
import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from ferry.xds import resources as xds
from ferry.envoy.admin import EnvoyAdmin

from . import ferry_process
from .helpers import free_port, wait_until

pytestmark = pytest.mark.timeout(180)

HOST = "hello.localhost"


@dataclass(frozen=True)
class Span:
    name: str
    kind: int
    trace_id: str
    service_name: str  # the resource's service.name
    attributes: dict[str, object]


def _value(any_value) -> object:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind is not None else None


_SCOPE_SPANS = trace_pb2.ResourceSpans.DESCRIPTOR.fields_by_number[2].name


class Collector:
    """An OTLP/gRPC trace receiver on a free loopback port: every span Envoy exports, flattened."""

    def __init__(self):
        self.port = free_port()
        self._lock = threading.Lock()
        self._spans: list[Span] = []
        self.exports = 0
        # No *_pb2_grpc stub ships with xds-protos' OTLP messages: a generic handler for the one method.
        handler = grpc.method_handlers_generic_handler("opentelemetry.proto.collector.trace.v1.TraceService", {
            "Export": grpc.unary_unary_rpc_method_handler(
                self._export,
                request_deserializer=trace_service_pb2.ExportTraceServiceRequest.FromString,
                response_serializer=trace_service_pb2.ExportTraceServiceResponse.SerializeToString),
        })
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[handler])
        self._server.add_insecure_port(f"127.0.0.1:{self.port}")

    def _export(self, request: trace_service_pb2.ExportTraceServiceRequest, context) -> object:
        spans = []
        for resource_spans in request.resource_spans:
            resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
            # xds-protos ships an old OTLP: field 2 of ResourceSpans is instrumentation_library_spans there,
            # scope_spans (same number, same shape) in what Envoy sends.
            for scope_spans in getattr(resource_spans, _SCOPE_SPANS):
                for span in scope_spans.spans:
                    spans.append(Span(span.name, span.kind, span.trace_id.hex(), str(resource.get("service.name")),
                                      {kv.key: _value(kv.value) for kv in span.attributes}))
        with self._lock:
            self._spans.extend(spans)
            self.exports += 1
        return trace_service_pb2.ExportTraceServiceResponse()

    @property
    def spans(self) -> list[Span]:
        with self._lock:
            return list(self._spans)

    def by_request_id(self, request_id: str) -> list[Span]:
        return [s for s in self.spans if s.attributes.get("guid:x-request-id") == request_id]

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop(grace=None).wait(10)


@pytest.fixture
def collector():
    c = Collector()
    c.start()
    try:
        yield c
    finally:
        c.stop()


def tracing(c: Collector, sampling: float) -> str:
    return f"tracing: {{otlp: 127.0.0.1:{c.port}, sampling: {sampling}}}"


async def echo(gateway: str, path: str = "/headers", **headers) -> dict:
    """One request through the gateway, on a connection of its own (never one opened before a config change), to
    the example app's /headers: what the app saw (ferry-revision, x-request-id) and the revision that answered."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gateway}{path}", headers={"Host": HOST, **headers}) as response:
            assert response.status == 200
            seen = await response.json()
            seen["answered-by"] = response.headers["x-revision"]
            return seen


async def test_each_span_names_the_service_and_the_revision_that_answered(ferry, collector):
    f = ferry()
    f.write_routes(ferry_process.hello("v1"), gateway=tracing(collector, 1.0))
    await f.start()
    await f.wait_converged()
    # What a client sends in the two headers the tags read is replaced by the route's; its secrets are no tags.
    client = {"Authorization": "Bearer s3cret-auth", "Cookie": "session=s3cret-cookie",
              "ferry-revision": "spoofed", "ferry-service": "spoofed"}
    seen = [await echo(f.gateway, "/headers?token=q", **client) for _ in range(3)]
    ids = [s["x-request-id"] for s in seen]
    assert len(set(ids)) == 3 and all(s["answered-by"] == "hello-00001" for s in seen)

    await wait_until(lambda: all(collector.by_request_id(i) for i in ids), 30,
                     f"a span for each of the 3 requests; log:\n{f.log_text}")
    for request_id in ids:
        [span] = collector.by_request_id(request_id)  # one span per request: the gateway's
        assert span.attributes["ferry.revision"] == "hello-00001", span
        assert span.attributes["ferry.service"] == "hello", span
        assert span.kind == trace_pb2.Span.SPAN_KIND_SERVER, span
        assert span.service_name == "ferry-gateway", span
        assert span.attributes["http.url"] == f"http://{HOST}/headers?token=q", span
        assert span.attributes["http.method"] == "GET" and span.attributes["http.status_code"] == "200", span
        assert "s3cret" not in repr(span.attributes), span


async def test_a_split_gives_spans_naming_both_revisions(ferry, collector):
    f = ferry()
    f.write_routes(ferry_process.hello("v1"), gateway=tracing(collector, 1.0))
    await f.start()
    await f.wait_converged()
    split = "traffic: [{revision: hello-00001, percent: 50}, {latestRevision: true, percent: 50}]"
    f.write_routes(ferry_process.hello("v2", extra=(split,)), gateway=tracing(collector, 1.0))

    async def split_routed() -> bool:
        traffic = (await f.status())["services"]["hello"].get("traffic") or []
        return {t["revision"]: t["percent"] for t in traffic} == {"hello-00001": 50, "hello-00002": 50}

    await wait_until(split_routed, 60, f"the 50/50 split; log:\n{f.log_text}")
    await f.wait_converged()
    answered: dict[str, str] = {}  # x-request-id -> the revision that answered
    while len(set(answered.values())) < 2:  # 50/50: both answer within a few requests
        seen = await echo(f.gateway)
        assert seen["ferry-revision"] == seen["answered-by"], seen
        answered[seen["x-request-id"]] = seen["answered-by"]
        assert len(answered) < 200, answered
    assert set(answered.values()) == {"hello-00001", "hello-00002"}

    await wait_until(lambda: all(collector.by_request_id(i) for i in answered), 30,
                     f"a span for each of the {len(answered)} requests; log:\n{f.log_text}")
    for request_id, revision in answered.items():
        [span] = collector.by_request_id(request_id)
        assert span.attributes["ferry.revision"] == revision and span.attributes["ferry.service"] == "hello", span
    assert {s.attributes["ferry.revision"] for s in collector.spans
            if s.attributes.get("guid:x-request-id") in answered} == {"hello-00001", "hello-00002"}


async def test_sampling_zero_sends_no_span_whatever_the_client_asks(ferry, collector):
    f = ferry()
    f.write_routes(ferry_process.hello("v1"), gateway=tracing(collector, 0.0))
    await f.start()
    await f.wait_converged()
    asked = [{}, {"x-client-trace-id": "please-trace"}, {"x-envoy-force-trace": "true"},
             {"traceparent": f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"},  # W3C, sampled
             {"x-b3-traceid": os.urandom(16).hex(), "x-b3-spanid": os.urandom(8).hex(), "x-b3-sampled": "1"}]
    unsampled = [(await echo(f.gateway, **headers))["x-request-id"] for headers in asked for _ in range(2)]
    assert len(set(unsampled)) == len(unsampled)

    # Proving "none": sampling 1.0 (the same collector, so Envoy keeps the same tracer and its buffer), then one
    # request whose span must arrive; Envoy exports spans in the order they end, and the unsampled ones ended first.
    f.write_routes(ferry_process.hello("v1"), gateway=tracing(collector, 1.0))
    await wait_until(lambda: _sampling_is(f, 1.0), 30, f"sampling 1.0 in the gateway's listener; log:\n{f.log_text}")
    marker = (await echo(f.gateway))["x-request-id"]
    await wait_until(lambda: collector.by_request_id(marker), 30, f"the sampled request's span; log:\n{f.log_text}")
    assert not [s for s in collector.spans if s.attributes.get("guid:x-request-id") in unsampled], collector.spans
    assert {s.attributes.get("guid:x-request-id") for s in collector.spans} == {marker}


async def _sampling_is(f, sampling: float) -> bool:
    """Every active listener of the gateway traces with this sampling (ferry pushed it, Envoy took it)."""
    status, body = await EnvoyAdmin("127.0.0.1", f.admin_port).get("/config_dump?resource=dynamic_listeners")
    if status != 200:
        return False
    found = [_random_sampling(listener.get("active_state", {})) for listener in json.loads(body)["configs"]]
    return bool(found) and all(values == [sampling * 100] for values in found)


def _random_sampling(node) -> list[float]:
    """Every tracing.random_sampling in a config dump's subtree (absent: Envoy's default, 100)."""
    if isinstance(node, list):
        return [v for item in node for v in _random_sampling(item)]
    if not isinstance(node, dict):
        return []
    if isinstance(node.get("tracing"), dict):
        given = node["tracing"].get("random_sampling")  # proto3 JSON leaves out a value of 0
        return [100.0 if given is None else float(given.get("value", 0.0))]
    return [v for item in node.values() for v in _random_sampling(item)]


def test_only_sampling_decides_which_requests_are_traced() -> None:
    """x-client-trace-id would force a span at any sampling with Envoy's default client_sampling (100%)."""
    tracing_config = xds.http_manager(observe=xds.Observe(tracing=True, sampling=0.0)).tracing
    assert tracing_config.HasField("client_sampling") and tracing_config.client_sampling.value == 0
    assert tracing_config.HasField("random_sampling") and tracing_config.random_sampling.value == 0
