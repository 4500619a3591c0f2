"""backend: local (default) or kubernetes, and the template fields each backend takes, with precise errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from ferry.routing import (
    Backend,
    Problem,
    Resources,
    RoutesFile,
    Template,
    load_routes,
)
from ferry.routing.revisions import canonical_template, template_digest
from ferry.routing.schema import backend_kind

from . import helpers

QUANTITY_EXAMPLES = "e.g. 500m (half a CPU), 2 (CPUs) or 256Mi (memory, 256 MiB)"


def load(tmp_path: Path, text: str) -> RoutesFile:
    return helpers.load(tmp_path, text).spec


def problems(tmp_path: Path, text: str) -> list[tuple[int | None, str, str]]:
    return [(p.line, p.path, p.message) for p in helpers.problems(tmp_path, text)]


def kube(template: str, backend: str = "kubernetes") -> str:
    return f"backend: {backend}\nservices:\n  hello:\n    template: {template}\n"


# ---- backend: ------------------------------------------------------------------------------------------------


def test_backend_defaults_to_local(tmp_path: Path) -> None:
    spec = load(tmp_path, "services:\n  hello:\n    template: {command: [a]}\n")
    assert spec.backend == Backend() == Backend(kind="local", kubeconfig=None, context=None)
    assert (spec.backend.namespace, spec.backend.kubeconfig, spec.backend.context) == ("default", None, None)
    assert load(tmp_path, "backend:\nservices: {}\n").backend == Backend()  # empty means the default
    assert RoutesFile().backend.kind == "local"


@pytest.mark.parametrize("kind", ["local", "kubernetes"])
def test_a_string_is_short_for_the_kind(tmp_path: Path, kind: str) -> None:
    assert load(tmp_path, f"backend: {kind}\n").backend == Backend(kind=kind)
    assert load(tmp_path, f"backend: {{kind: {kind}}}\n").backend == Backend(kind=kind)


def test_kubernetes_backend_fields(tmp_path: Path) -> None:
    spec = load(
        tmp_path,
        """
        backend:
          kind: kubernetes
          namespace: apps
          kubeconfig: ~/.kube/config
          context: kind-ferry
        """,
    )
    assert spec.backend == Backend(kind="kubernetes", namespace="apps", kubeconfig="~/.kube/config", context="kind-ferry")
    assert load(tmp_path, "backend: {kind: kubernetes, namespace: 0-team}\n").backend.namespace == "0-team"  # DNS-1123
    assert load(tmp_path, "backend: {kind: kubernetes, kubeconfig: kube/config}\n").backend.kubeconfig == "kube/config"
    assert hash(spec.backend) == hash(Backend(kind="kubernetes", namespace="apps", kubeconfig="~/.kube/config", context="kind-ferry"))


@pytest.mark.parametrize(
    ("backend", "path", "message"),
    [
        ("kube", "backend.kind", "expected one of 'local' or 'kubernetes', got 'kube'; did you mean 'kubernetes'?"),
        ("k8s", "backend.kind", "expected one of 'local' or 'kubernetes', got 'k8s'; did you mean 'kubernetes'?"),
        ("{kind: Kubernetes}", "backend.kind", "expected one of 'local' or 'kubernetes', got 'Kubernetes'; did you mean 'kubernetes'?"),
        ("5", "backend", "expected local, kubernetes or a mapping (kind: kubernetes, namespace: ...), got 5"),
        ("[kubernetes]", "backend", "expected local, kubernetes or a mapping (kind: kubernetes, namespace: ...), got a list"),
        (
            "{kind: kubernetes, namepsace: apps}",
            "backend.namepsace",
            "unknown field 'namepsace'; did you mean 'namespace'? (allowed: kind, namespace, kubeconfig, context)",
        ),
        (
            "{kind: kubernetes, namespace: Apps}",
            "backend.namespace",
            "invalid namespace 'Apps' (try 'apps'): a Kubernetes namespace is a DNS-1123 label: lowercase letters, "
            "digits and '-', starting and ending with a letter or digit, at most 63 characters, e.g. apps",
        ),
        ("{kind: kubernetes, namespace: " + "a" * 64 + "}", "backend.namespace", "invalid namespace 'aaaa"),
        ("{kind: kubernetes, namespace: -apps}", "backend.namespace", "invalid namespace '-apps'"),
        ("{kind: kubernetes, namespace: 5}", "backend.namespace", 'expected a string, got 5: YAML reads it as a number: put it in quotes, e.g. "5"'),
        (
            "{kind: kubernetes, kubeconfig: ''}",
            "backend.kubeconfig",
            "kubeconfig is empty: give the path of a kubeconfig file, e.g. ~/.kube/config, or remove it",
        ),
        (
            "{kind: kubernetes, context: ' '}",
            "backend.context",
            "context is empty: give a context name from the kubeconfig, e.g. kind-ferry, or remove it",
        ),
    ],
)
def test_bad_backends(tmp_path: Path, backend: str, path: str, message: str) -> None:
    [(line, got_path, got)] = problems(tmp_path, f"gateway: {{}}\nbackend: {backend}\n")
    assert (line, got_path) == (2, path)
    assert got.startswith(message) if message.endswith(("'aaaa", "'-apps'")) else got == message


def test_kubernetes_fields_with_kind_local_are_each_an_error(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        backend:
          namespace: apps
          kubeconfig: ~/.kube/config
          context: kind-ferry
        """,
    )
    assert found == [
        (2, "backend.namespace", "namespace is only for kind: kubernetes: remove it or set kind: kubernetes"),
        (3, "backend.kubeconfig", "kubeconfig is only for kind: kubernetes: remove it or set kind: kubernetes"),
        (4, "backend.context", "context is only for kind: kubernetes: remove it or set kind: kubernetes"),
    ]
    [(line, path, _)] = problems(tmp_path, "backend: {kind: local, namespace: default}\n")
    assert (line, path) == (1, "backend.namespace")


def test_unknown_top_level_key_suggests_backend(tmp_path: Path) -> None:
    [(line, path, message)] = problems(tmp_path, "backnd: kubernetes\n")
    assert (line, path) == (1, "backnd")
    assert message == "unknown field 'backnd'; did you mean 'backend'? (allowed: gateway, backend, services)"


# ---- template on backend kubernetes ----------------------------------------------------------------------------


def test_kubernetes_template_fields(tmp_path: Path) -> None:
    spec = load(
        tmp_path,
        """
        backend: {kind: kubernetes, namespace: apps}
        services:
          hello:
            template:
              image: ghcr.io/me/hello@sha256:0123abcd
              command: [/bin/hello]
              args: [--verbose, "--port=8080"]
              port: 9000
              readiness: {path: /healthz}
              resources:
                requests: {cpu: 500m, memory: 256Mi}
                limits: {cpu: 1, memory: 1.5Gi}
          static:
            template: {endpoints: [10.0.0.9:9001]}
        """,
    )
    t = spec.services["hello"].template
    assert (t.image, t.command, t.args, t.port) == ("ghcr.io/me/hello@sha256:0123abcd", ("/bin/hello",), ("--verbose", "--port=8080"), 9000)
    assert t.resources == Resources(requests={"cpu": "500m", "memory": "256Mi"}, limits={"cpu": "1", "memory": "1.5Gi"})
    assert t.readiness is not None and t.readiness.path == "/healthz"
    assert spec.services["static"].template.image is None
    minimal = load(tmp_path, kube("{image: nginx}")).services["hello"].template
    assert (minimal.image, minimal.command, minimal.args, minimal.port, minimal.resources) == ("nginx", None, None, None, None)


@pytest.mark.parametrize(
    ("written", "stored"),
    [("1", "1"), ("0.5", "0.5"), ("'0.5'", "0.5"), ("0", "0"), ("500m", "500m"), ("256Mi", "256Mi"), ("1Gi", "1Gi"),
     ("2k", "2k"), ("1.5G", "1.5G"), ("1e3", "1e3"), ("'.5'", ".5"), (".5", "0.5"), ("1000000.0", "1000000"), ("1T", "1T")],
)
def test_quantities_accepted(tmp_path: Path, written: str, stored: str) -> None:
    t = load(tmp_path, kube(f"{{image: a, resources: {{limits: {{memory: {written}}}}}}}")).services["hello"].template
    assert t.resources is not None and t.resources.limits == {"memory": stored}


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("256MB", f"'256MB' is not a Kubernetes quantity (write 256M for MB or 256Mi for MiB): {QUANTITY_EXAMPLES}"),
        ("1gi", f"'1gi' is not a Kubernetes quantity (write 1Gi: the suffixes are case-sensitive): {QUANTITY_EXAMPLES}"),
        ("-1", f"a quantity cannot be negative, got -1: {QUANTITY_EXAMPLES}"),
        ("'-1'", f"'-1' is not a Kubernetes quantity (it cannot be negative): {QUANTITY_EXAMPLES}"),
        ("half", f"'half' is not a Kubernetes quantity: {QUANTITY_EXAMPLES}"),
        ("''", f"'' is not a Kubernetes quantity: {QUANTITY_EXAMPLES}"),
        ("true", f"expected a Kubernetes quantity, got true: {QUANTITY_EXAMPLES}"),
        ("[1]", f"expected a Kubernetes quantity, got a list: {QUANTITY_EXAMPLES}"),
        (".inf", f"expected a finite Kubernetes quantity, got inf: {QUANTITY_EXAMPLES}"),
    ],
)
def test_quantities_rejected(tmp_path: Path, written: str, message: str) -> None:
    [(line, path, got)] = problems(tmp_path, kube(f"{{image: a, resources: {{requests: {{cpu: {written}}}}}}}"))
    assert (line, path, got) == (4, "services.hello.template.resources.requests.cpu", message)


def test_resource_names_and_shape(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        backend: kubernetes
        services:
          hello:
            template:
              image: a
              resources:
                requests: {memroy: 1Gi, storage: 1}
                limit: {cpu: 1}
        """,
    )
    base = "services.hello.template.resources"
    assert found == [
        (7, f"{base}.requests.memroy", "expected one of 'cpu' or 'memory', got 'memroy'; did you mean 'memory'?"),
        (7, f"{base}.requests.storage", "expected one of 'cpu' or 'memory', got 'storage'"),
        (8, f"{base}.limit", "unknown field 'limit'; did you mean 'limits'? (allowed: requests, limits)"),
    ]
    [(_, path, message)] = problems(tmp_path, kube("{image: a, resources: 500m}"))
    assert (path, message) == (f"{base}", "expected a mapping (key: value lines), got '500m'")


def test_a_request_above_its_limit(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        kube("{image: a, resources: {requests: {cpu: 2, memory: 1025Mi}, limits: {cpu: 1500m, memory: 1Gi}}}"),
    )
    base = "services.hello.template.resources.requests"
    assert found == [
        (4, f"{base}.cpu", "requests.cpu 2 is more than limits.cpu 1500m; Kubernetes refuses a request above its limit: lower the request or raise the limit"),
        (4, f"{base}.memory", "requests.memory 1025Mi is more than limits.memory 1Gi; Kubernetes refuses a request above its limit: lower the request or raise the limit"),
    ]
    ok = load(tmp_path, kube("{image: a, resources: {requests: {cpu: 1000m, memory: 1Gi}, limits: {cpu: 1, memory: 1024Mi}}}"))
    assert ok.services["hello"].template.resources is not None


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("image: ''", "image is empty: give an OCI image reference, e.g. ghcr.io/me/hello:1.0"),
        (
            "image: 'nginx --debug'",
            "image 'nginx --debug' has whitespace; an OCI image reference has none: write it as one word, "
            "e.g. ghcr.io/me/hello:1.0 (put arguments in args)",
        ),
        ("image: 5", 'expected a string, got 5: YAML reads it as a number: put it in quotes, e.g. "5"'),
        ("port: 0", "must be 1 or more, got 0"),
        ("port: 65536", "must be 65535 or less, got 65536"),
        ("port: '8080'", "expected an integer, got '8080': remove the quotes to write an integer"),
        ("args: --verbose", "expected a list, got '--verbose': write it as a YAML list, e.g. [--verbose]"),
        ("args: [1]", 'expected a string, got 1: YAML reads it as a number: put it in quotes, e.g. "1"'),
    ],
)
def test_bad_kubernetes_template_fields(tmp_path: Path, field: str, message: str) -> None:
    name = field.split(":")[0]
    base = "{image: a, " if name != "image" else "{"
    [(line, path, got)] = problems(tmp_path, kube(base + field + "}"))
    assert (line, got) == (4, message)
    assert path == f"services.hello.template.{name}" + ("[0]" if field == "args: [1]" else "")


def test_port_range_edges(tmp_path: Path) -> None:
    for port in (1, 8080, 65535):
        assert load(tmp_path, kube(f"{{image: a, port: {port}}}")).services["hello"].template.port == port


def test_kubernetes_template_rules(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        backend: kubernetes
        services:
          none:
            template: {env: {A: b}}
          both:
            template: {image: a, endpoints: [10.0.0.9:9001]}
          cmd:
            template: {command: [a]}
          cmdendpoints:
            template: {command: [a], endpoints: [10.0.0.9:9001]}
          extras:
            template: {endpoints: [10.0.0.9:9001], args: [x], port: 80, resources: {limits: {cpu: 1}}}
        """,
    )
    assert found == [
        (4, "services.none.template", "no image or endpoints: add image: <reference> (backend kubernetes runs "
         "containers, e.g. image: ghcr.io/me/hello:1.0) or endpoints: [host:port, ...]"),
        (6, "services.both.template", "give either image (ferry runs it on Kubernetes) or endpoints (already running), not both"),
        (8, "services.cmd.template.command", "on backend kubernetes, command overrides the entrypoint of the container's "
         "image, and there is no image: add image: <reference>, e.g. image: ghcr.io/me/hello:1.0 (to run command as "
         "a local process, set backend: local)"),
        (10, "services.cmdendpoints.template.command", "command overrides the entrypoint of the container's image, and "
         "endpoints run no container: remove command, or replace endpoints with image: <reference>"),
        (12, "services.extras.template.args", "args is for the container of an image, and endpoints run no container: remove args"),
        (12, "services.extras.template.port", "port is for the container of an image, and endpoints run no container: remove port"),
        (12, "services.extras.template.resources", "resources is for the container of an image, and endpoints run no "
         "container: remove resources"),
    ]


def test_all_problems_in_one_pass_across_backend_and_templates(tmp_path: Path) -> None:
    """A bad namespace does not hide the templates' problems: the kind is what they depend on."""
    found = problems(
        tmp_path,
        """
        backend: {kind: kubernetes, namespace: Bad_NS}
        services:
          hello:
            template: {command: [a]}
          world:
            template: {image: a, port: 0}
        """,
    )
    assert [(line, path) for line, path, _ in found] == [
        (1, "backend.namespace"),
        (4, "services.hello.template.command"),
        (6, "services.world.template.port"),
    ]


# ---- template on backend local --------------------------------------------------------------------------------

LOCAL_MESSAGES = {
    "image": "image runs on backend kubernetes; ferry runs local revisions from command: set backend: kubernetes "
    "at the top of the file, or use command",
    "args": "args are the container's arguments on backend kubernetes; ferry runs local revisions from command: put "
    "them in command, or set backend: kubernetes at the top of the file",
    "port": "port is the container's port on backend kubernetes; a local revision listens on the port ferry gives it "
    "in $PORT: remove it, or set backend: kubernetes at the top of the file",
    "resources": "resources are the container's requests and limits on backend kubernetes; local revisions run "
    "without them: remove them, or set backend: kubernetes at the top of the file",
}


@pytest.mark.parametrize("backend", ["", "backend: local\n", "backend: {kind: local}\n"])
def test_kubernetes_fields_on_backend_local_are_errors_at_their_own_path(tmp_path: Path, backend: str) -> None:
    text = backend + textwrap.dedent(
        """\
        services:
          hello:
            template:
              command: [python3, app.py]
              image: nginx
              args: [x]
              port: 0
              resources: {limits: {cpu: nonsense}}
        """
    )
    found = problems(tmp_path, text)
    first = 6 if backend else 5
    assert found == [
        (first + i, f"services.hello.template.{field}", LOCAL_MESSAGES[field])
        for i, field in enumerate(("image", "args", "port", "resources"))
    ]  # reported whatever the value holds (port 0, a bad quantity): removing it is the fix


def test_local_rules_keep_their_messages(tmp_path: Path) -> None:
    [(_, path, message)] = problems(tmp_path, "services:\n  hello:\n    template: {env: {A: b}}\n")
    assert (path, message) == (
        "services.hello.template",
        "no command or endpoints: add command: [program, args...] or endpoints: [host:port, ...]",
    )
    [(_, path, message)] = problems(tmp_path, "services:\n  hello:\n    template: {image: a}\n")
    assert (path, message) == ("services.hello.template.image", LOCAL_MESSAGES["image"])
    found = problems(tmp_path, "backend: local\nservices:\n  hello:\n    template: {command: [a], endpoints: [127.0.0.1:1]}\n")
    assert found == [
        (4, "services.hello.template", "give either command (ferry runs the instances) or endpoints (already running), not both")
    ]


def test_null_kubernetes_fields_are_not_written(tmp_path: Path) -> None:
    t = load(tmp_path, "services:\n  hello:\n    template: {command: [a], image: null, port: null}\n").services["hello"].template
    assert t == Template(command=("a",))


def test_an_invalid_kind_checks_only_what_is_wrong_everywhere(tmp_path: Path) -> None:
    found = problems(tmp_path, kube("{image: a, port: 80}", backend="kube"))
    assert [path for _, path, _ in found] == ["backend.kind"]


# ---- standalone models and digests -----------------------------------------------------------------------------


def test_templates_validated_on_their_own_check_what_no_backend_allows() -> None:
    assert Template(image="nginx").image == "nginx"  # valid on kubernetes
    assert Template(command=("a",)).command == ("a",)  # valid on local
    for bad, words in (({}, "no command or endpoints"), ({"image": "a", "endpoints": ["127.0.0.1:1"]}, "not both")):
        with pytest.raises(ValueError, match=words):
            Template(**bad)
    with backend_kind("kubernetes"), pytest.raises(ValueError, match="there is no image"):
        Template(command=("a",))
    with backend_kind("local"), pytest.raises(ValueError, match="image runs on backend kubernetes"):
        Template(image="a")


def test_existing_templates_keep_their_digest(tmp_path: Path) -> None:
    pinned = "77730907f5a491c1f53aedf3ade7c45e96264b83fe642f020a9c02afc42755dc"  # before the Kubernetes fields
    local = load(tmp_path, "services:\n  hello:\n    template: {command: [a]}\n")
    assert template_digest(local.services["hello"].template) == pinned
    with_backend = load(tmp_path, "backend: local\nservices:\n  hello:\n    template: {command: [a]}\n")
    assert template_digest(with_backend.services["hello"].template) == pinned
    t = load(tmp_path, kube("{image: a, command: [a], resources: {limits: {cpu: 1}}}")).services["hello"].template
    assert canonical_template(t) == '{"command":["a"],"image":"a","resources":{"limits":{"cpu":"1"}}}'
    same = load(tmp_path, kube("{image: a, command: [a], resources: {limits: {cpu: '1'}}}")).services["hello"].template
    assert template_digest(same) == template_digest(t)


def test_kubernetes_spec_dumps_and_loads_back_equal(tmp_path: Path) -> None:
    import yaml

    spec = load(tmp_path, "backend: {kind: kubernetes, namespace: apps, context: c}\n" + kube("{image: a, port: 81, args: [x], resources: {requests: {memory: 1Gi}}}").split("\n", 1)[1])
    dumped = yaml.safe_dump(spec.model_dump(mode="json", exclude_defaults=True), sort_keys=False)
    assert load(tmp_path, dumped) == spec
    assert hash(spec) == hash(load(tmp_path, dumped))


def test_problem_type_is_reexported() -> None:
    assert Problem("a", "b").path == "a"


def test_an_incremental_reload_keeps_the_kubernetes_backend(tmp_path) -> None:

    head = "backend: {kind: kubernetes, namespace: apps}\nservices:\n"
    service = "  {name}:\n    template:\n      image: example/{name}:{tag}\n"
    path = tmp_path / "routes.yaml"
    first = load_routes(path, text=head + service.format(name="a", tag=1) + service.format(name="b", tag=1))
    second = load_routes(path, text=head + service.format(name="a", tag=2) + service.format(name="b", tag=1),
                         previous=first)
    assert second.spec.backend.kind == "kubernetes" and second.spec.backend.namespace == "apps"
    assert second.spec.services["b"] is first.spec.services["b"]  # the unchanged service was kept
    assert second.spec.services["a"].template.image == "example/a:2"
    local = load_routes(path, text="services:\n  a:\n    template:\n      command: [x]\n", previous=second)
    assert local.spec.backend.kind == "local"
