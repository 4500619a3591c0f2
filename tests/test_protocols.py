"""Protocol settings without Envoy: the timeouts and visibility fields, what they make of routes, and gRPC
failures in rollout analysis."""

from __future__ import annotations

from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from ferry.routing.revisions import template_digest
from ferry.routing.schema import Template
from ferry.rollout.stats import parse_samples
from ferry.xds import resources as xds

from .helpers import load, only

HELLO = """
    gateway: {{listen: 127.0.0.1:8080{gateway}}}
    services:
      hello:
        {service}
        template:
          command: [python3, app.py]
          {template}
"""


def routes(template: str = "", service: str = "", gateway: str = "") -> str:
    return HELLO.format(template=template, service=service, gateway=gateway)


def test_timeouts_are_read_with_knatives_defaults(tmp_path):
    spec = load(tmp_path, routes("timeout: 60s")).spec.services["hello"].template
    assert (spec.timeout, spec.responseStartTimeout, spec.response_start_timeout, spec.idleTimeout) == (60, None, 60, 0)
    spec = load(tmp_path, routes("timeout: 60s\n          responseStartTimeout: 5s\n          idleTimeout: 1m")).spec
    template = spec.services["hello"].template
    assert (template.response_start_timeout, template.idleTimeout) == (5, 60)


def test_new_fields_at_their_defaults_keep_a_revisions_digest():
    plain = Template(command=("python3", "app.py"))
    explicit = Template(command=("python3", "app.py"), idleTimeout=0, protocol="http1")
    assert template_digest(plain) == template_digest(explicit)
    assert template_digest(plain) != template_digest(Template(command=("python3", "app.py"), idleTimeout=5))


def test_a_response_start_beyond_the_timeout_is_refused(tmp_path):
    problem = only(tmp_path, routes("timeout: 10s\n          responseStartTimeout: 30s"))
    assert problem.path == "services.hello.template"
    assert "responseStartTimeout (30s) is longer than timeout (10s)" in problem.message and "lower it" in problem.message


def test_a_negative_idle_timeout_is_refused(tmp_path):
    problem = only(tmp_path, routes("idleTimeout: -1"))
    assert problem.path == "services.hello.template.idleTimeout" and "cannot be negative" in problem.message


def test_a_private_service_needs_the_internal_listener(tmp_path):
    problem = only(tmp_path, routes(service="visibility: private"))
    assert (problem.path, problem.line) == ("services.hello.visibility", 4)
    assert "gateway.internal" in problem.message and "make the service public" in problem.message
    loaded = load(tmp_path, routes(service="visibility: private", gateway=", internal: 127.0.0.1:8081"))
    assert loaded.spec.services["hello"].visibility == "private"


def test_the_internal_listener_is_not_the_public_one(tmp_path):
    problem = only(tmp_path, routes(gateway=", internal: 127.0.0.1:8080"))
    assert problem.path == "gateway.internal" and "127.0.0.1:8081" in problem.message


def test_an_unknown_visibility_is_refused(tmp_path):
    problem = only(tmp_path, routes(service="visibility: cluster-local"))
    assert problem.path == "services.hello.visibility" and "public" in problem.message and "private" in problem.message


def _host(**fields) -> xds.HostRoute:
    target = xds.WeightedTarget("hello/hello-00001", "hello-00001", 100)
    return xds.HostRoute(name="hello", service="hello", domains=("hello.localhost",), targets=(target,),
                         tagged=(("next", target),), **fields)


def test_routes_carry_the_total_and_idle_timeouts():
    (vhost,) = _table(_host(timeout_s=300)).virtual_hosts
    assert {(r.route.timeout.seconds, r.route.idle_timeout.seconds) for r in vhost.routes} == {(300, 300)}
    (vhost,) = _table(_host(timeout_s=300, idle_timeout_s=20)).virtual_hosts
    assert {(r.route.timeout.seconds, r.route.idle_timeout.seconds) for r in vhost.routes} == {(300, 20)}


def test_a_private_hosts_every_route_matches_the_internal_listeners_mark_only():
    (public,) = _table(_host(timeout_s=10)).virtual_hosts
    assert all(not any(h.name == xds.LISTENER_HEADER for h in r.match.headers) for r in public.routes)
    (private,) = _table(_host(timeout_s=10, internal_only=True)).virtual_hosts
    assert len(private.routes) == len(public.routes) >= 3  # two tag-header routes and the split
    for route in private.routes:
        marks = [h for h in route.match.headers if h.name == xds.LISTENER_HEADER]
        assert len(marks) == 1 and marks[0].string_match.exact == "internal"


def test_each_listener_marks_its_requests_before_routing_whatever_the_client_sent():
    for name, mark in ((xds.LISTENER_NAME, "public"), (xds.INTERNAL_LISTENER_NAME, "internal")):
        listener = listener_pb2.Listener.FromString(xds.listener("127.0.0.1", 8080, name=name, mark=mark).body)
        manager = hcm_pb2.HttpConnectionManager()
        listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
        (early,) = manager.early_header_mutation_extensions
        assert mark.encode() in early.typed_config.value and xds.LISTENER_HEADER.encode() in early.typed_config.value
        assert [f.name for f in manager.http_filters] == ["envoy.filters.http.grpc_stats", "envoy.filters.http.router"]


def _table(route: xds.HostRoute) -> route_pb2.RouteConfiguration:
    return route_pb2.RouteConfiguration.FromString(xds.route_table("hello", (route,)).body)


def test_grpc_server_failures_count_as_errors_and_client_ones_do_not():
    body = b"""\
envoy_cluster_upstream_rq_xx{envoy_response_code_class="2",envoy_cluster_name="echo/echo-00002"} 100
envoy_cluster_grpc_0{envoy_cluster_name="echo/echo-00002"} 80
envoy_cluster_grpc_5{envoy_cluster_name="echo/echo-00002"} 5
envoy_cluster_grpc_13{envoy_cluster_name="echo/echo-00002"} 10
envoy_cluster_grpc_14{envoy_cluster_name="echo/echo-00002"} 5
envoy_cluster_grpc_total{envoy_cluster_name="echo/echo-00002"} 100
"""
    sample = parse_samples(body, ["echo/echo-00002"])["echo/echo-00002"]
    assert (sample.requests, sample.errors) == (100, 15)  # INTERNAL and UNAVAILABLE; NOT_FOUND is the client's


def test_grpc_errors_never_exceed_the_requests():
    body = b"""\
envoy_cluster_upstream_rq_xx{envoy_response_code_class="5",envoy_cluster_name="echo/echo-00002"} 3
envoy_cluster_grpc_4{envoy_cluster_name="echo/echo-00002"} 3
"""
    sample = parse_samples(body, ["echo/echo-00002"])["echo/echo-00002"]
    assert (sample.requests, sample.errors) == (3, 3)  # Envoy's own timeout counts as a 504 and as DEADLINE_EXCEEDED
