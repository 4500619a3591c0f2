"""The security review's findings against a real `ferry up` with real Envoy and real instances: a private state
folder, an API that wants its token and reads no file, no endpoint that opens ferry's own listeners to the
gateway's clients, children that get only the basics of ferry's environment, values the OS refuses caught at
validation, spawn failures in status, Envoy's admin on loopback behind a read-only stats listener and its edge
settings in place. Each test fails on the code before the review."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import aiohttp
import pytest

from ferry import statedir
from ferry.envoy.bootstrap import BootstrapOptions, bootstrap
from ferry.envoy.process import envoy_binary

from .ferry_process import FerryProcess, ferry_cli, hello
from .helpers import free_port, problems, wait_until
from .load import Load

pytestmark = pytest.mark.timeout(120)

ENV_APP = '''\
import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps(dict(os.environ)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
'''


def _mode(path: Path) -> str:
    return oct(stat.S_IMODE(os.lstat(path).st_mode))


async def _get(url: str, **headers) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers=headers) as response:
            return response.status, await response.text()


async def test_state_is_private_and_the_api_wants_its_token(ferry, tmp_path):
    f = ferry()
    f.write_routes(hello())
    await f.start()
    await f.wait_converged()
    folder = tmp_path / ".ferry"
    assert _mode(folder) == "0o700"
    files = {path.relative_to(folder).as_posix(): _mode(path) for path in folder.rglob("*") if path.is_file()}
    assert {"api-token", "activator-key", "state.db", "dataplane.db", "envoy-ferry-local.json",
            "logs/hello-00001-1.log"} <= files.keys()
    assert set(files.values()) == {"0o600"}, files
    assert {_mode(path) for path in folder.rglob("*") if path.is_dir()} == {"0o700"}

    status, body = await _get(f"{f.api}/status")
    assert status == 401 and "Bearer" in body
    assert (await _get(f"{f.api}/status", **f.headers))[0] == 200
    assert (await _get(f"{f.api}/status", Host="evil.example", **f.headers))[0] == 403
    assert (await _get(f"{f.api}/healthz"))[0] == 200

    # The CLI finds the token by itself: the file `ferry up` noted for that address (in the user's runtime folder),
    # .ferry/ here, beside the routes file, or $FERRY_TOKEN.
    api = ("--api", f"127.0.0.1:{f.api_port}")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    noted = {"XDG_RUNTIME_DIR": f.env["XDG_RUNTIME_DIR"]}
    assert ferry_cli("status", *api, cwd=elsewhere, env=noted).returncode == 0
    assert oct(stat.S_IMODE(os.stat(Path(noted["XDG_RUNTIME_DIR"]) / "ferry" / "apis").st_mode)) == "0o700"
    nothing = {"XDG_RUNTIME_DIR": str(elsewhere)}
    assert ferry_cli("status", *api, cwd=tmp_path, env=nothing).returncode == 0
    refused = ferry_cli("status", *api, cwd=elsewhere, env=nothing)
    assert refused.returncode != 0 and "token" in (refused.stdout + refused.stderr).lower()
    token = f.token_file.read_text().strip()
    assert ferry_cli("status", *api, cwd=elsewhere, env={**nothing, "FERRY_TOKEN": token}).returncode == 0
    assert ferry_cli("apply", str(f.routes), *api, cwd=elsewhere, env=nothing).returncode == 0  # beside the file


async def test_apply_reads_no_file_and_commands_resolve_beside_the_routes_file(ferry, tmp_path):
    (tmp_path / "envapp.py").write_text(ENV_APP)
    f = ferry()
    f.write_routes(hello())
    await f.start()
    await f.wait_converged()
    code, answer = await f.post("/apply", {"path": "/etc/passwd", "content": None})
    assert code == 400 and "root:" not in json.dumps(answer)
    assert "root:" not in json.dumps(await f.status())

    # `path` is a label: a relative command still resolves against the routes file ferry was started with.
    services = f"""\
        envy:
          template:
            command: [{sys.executable}, envapp.py]
            readiness: {{path: /}}
    """
    text = f"gateway:\n  listen: 127.0.0.1:{f.gateway_port}\n  domain: localhost\nservices:\n"
    text += textwrap.indent(textwrap.dedent(services), "  ")
    code, answer = await f.post("/apply", {"path": "/somewhere/else/routes.yaml", "content": text})
    assert code == 200 and answer["applied"] == "/somewhere/else/routes.yaml", answer
    await f.wait_converged()
    status, body = await _get(f.gateway, Host="envy.localhost")
    assert status == 200 and json.loads(body)["K_SERVICE"] == "envy"

    # A rejected file's message quotes at most 200 characters of any value.
    huge = "x" * 100_000
    code, answer = await f.post("/apply", {"content": text.replace("readiness: {path: /}", f"readiness: {{path: '{huge}'}}")})
    assert code == 422 and len(answer["error"]) < 2_000, len(answer["error"])
    assert len((await f.status())["config"]["last_error"]) < 2_000


async def test_instances_get_only_the_basics_of_ferrys_environment(ferry, tmp_path):
    (tmp_path / "envapp.py").write_text(ENV_APP)
    f = ferry(env={"AWS_SECRET_ACCESS_KEY": "leaked", "FERRY_TOKEN": "leaked", "LC_ALL": "C.UTF-8", "TZ": "UTC"})
    f.write_routes(f"""\
        envy:
          template:
            command: [{sys.executable}, envapp.py]
            env: {{GREETING: hi}}
            readiness: {{path: /}}
    """)
    await f.start()
    await f.wait_converged()
    status, body = await _get(f.gateway, Host="envy.localhost")
    assert status == 200
    env = json.loads(body)
    assert "AWS_SECRET_ACCESS_KEY" not in env and "FERRY_TOKEN" not in env
    assert env["GREETING"] == "hi" and env["K_REVISION"] == "envy-00001" and env["PORT"].isdigit()
    assert env["PATH"] == os.environ["PATH"] and env["LC_ALL"] == "C.UTF-8" and env["TZ"] == "UTC"
    allowed = {"PATH", "HOME", "LANG", "TZ", "TMPDIR", "USER", "LOGNAME", "GREETING", "PORT", "K_SERVICE",
               "K_CONFIGURATION", "K_REVISION"}
    assert {k for k in env if not k.startswith("LC_")} <= allowed, set(env) - allowed


@pytest.mark.parametrize(("listener", "host", "says"), [
    ("api", "localhost", "ferry's own listener"),
    ("xds", "localhost", "ferry's own listener"),
    ("activator", "localhost", "ferry's own listener"),
    ("admin", "localhost", "ferry's own listener"),
    ("gateway", "localhost", "ferry's own listener"),
    # Linux connects 0.0.0.0 and :: to the local host: the audit read Envoy's admin /server_info this way.
    ("admin", "0.0.0.0", "unspecified address"),
    ("api", "[::]", "unspecified address"),
    # an IPv4-mapped IPv6 address reaches the IPv4 one
    ("api", "[::ffff:127.0.0.1]", "ferry's own listener"),
])
async def test_an_endpoint_that_is_ferrys_own_listener_is_refused(ferry, listener, host, says):
    """`endpoints: [127.0.0.1:<ferry's API>]` would publish ferry's API through the public gateway."""
    f = ferry()
    f.write_routes(hello())
    await f.start()
    await f.wait_converged()
    port = {"api": f.api_port, "xds": f.xds_port, "activator": f.activator_port, "admin": f.admin_port,
            "gateway": f.gateway_port}[listener]
    text = f.routes.read_text() + f"  open:\n    template:\n      endpoints: ['{host}:{port}']\n"
    code, answer = await f.post("/apply", {"content": text})
    assert code == 422, answer
    (problem,) = answer["problems"]
    assert problem["path"] == "services.open.template.endpoints[0]" and says in problem["message"], problem
    assert problem["line"] is not None
    assert (await _get(f.gateway, Host="open.localhost"))[0] == 404  # nothing published
    assert (await _get(f"{f.gateway}/server_info", Host="open.localhost"))[0] == 404
    assert (await _get(f.gateway, Host="hello.localhost"))[0] == 200  # the last good configuration serves on


@pytest.mark.parametrize("endpoint", ["169.254.169.254:80", "[fe80::1]:80", "[::ffff:169.254.169.254]:80"])
def test_link_local_endpoints_are_refused(tmp_path, endpoint):
    (problem,) = problems(tmp_path, f"services:\n  meta:\n    template:\n      endpoints: ['{endpoint}']\n")
    assert problem.path == "services.meta.template.endpoints[0]" and "link-local" in problem.message


@pytest.mark.parametrize("endpoint", ["0.0.0.0:9901", "[::]:9901", "[::ffff:0.0.0.0]:9901", "[0:0::0]:9901"])
def test_unspecified_endpoints_are_refused(tmp_path, endpoint):
    (problem,) = problems(tmp_path, f"services:\n  any:\n    template:\n      endpoints: ['{endpoint}']\n")
    assert problem.path == "services.any.template.endpoints[0]", problem
    assert "unspecified address" in problem.message and "give the instance's own address" in problem.message


@pytest.mark.parametrize("endpoint", ["127.0.0.1:8090", "'[::ffff:127.0.0.1]:8090'"])
def test_loopback_endpoints_are_refused_on_kubernetes(tmp_path, endpoint):
    text = f"backend: {{kind: kubernetes}}\nservices:\n  s:\n    template:\n      endpoints: [{endpoint}]\n"
    (problem,) = problems(tmp_path, text)
    assert problem.path == "services.s.template.endpoints[0]" and "loopback" in problem.message


@pytest.mark.parametrize(("fields", "value"), [
    ("command: [python]\n      env: {X: \"a\\0b\"}", "env.X"),
    ("command: [\"py\\0thon\"]", "command[0]"),
    ("command: [python, \"-c\", \"\\0\"]", "command[2]"),
])
def test_values_the_os_refuses_fail_validation_with_their_path(tmp_path, fields, value):
    routes = tmp_path / "routes.yaml"
    routes.write_text(f"services:\n  hello:\n    template:\n      {fields}\n")
    result = ferry_cli("validate", str(routes), cwd=tmp_path)
    assert result.returncode == 1
    assert f"services.hello.template.{value}" in result.stderr and "NUL" in result.stderr


async def test_a_program_that_cannot_start_shows_in_status_and_the_log(ferry, tmp_path):
    script = tmp_path / "not-executable.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o600)
    f = ferry()
    f.write_routes("broken:\n  template:\n    command: [./not-executable.sh]\n")
    await f.start()

    async def error_shown() -> bool:
        revision = (await f.status())["revisions"].get("broken-00001")
        return bool(revision and any(i["error"] for i in revision["instances"]))

    await wait_until(error_shown, 30, f"the spawn failure in status; log:\n{f.log_text}")
    (instance, *_) = (await f.status())["revisions"]["broken-00001"]["instances"]
    assert "not an executable file" in instance["error"]
    assert "not an executable file" in f.log_text


def test_a_state_folder_that_is_a_symlink_or_open_to_others_is_fixed_or_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(PermissionError, match="not a plain folder"):
        statedir.prepare(tmp_path / "link")
    assert _mode(statedir.prepare(real)) == "0o700"  # group/other access taken away


@pytest.mark.skipif(os.geteuid() != 0, reason="making a folder another user owns needs root (CI runs as root)")
def test_a_state_folder_of_another_user_is_refused(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(PermissionError, match="belongs to another user"):
        statedir.prepare(theirs)


def test_a_planted_symlink_is_never_written_through(tmp_path):
    folder = statedir.prepare(tmp_path / ".ferry")
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (folder / statedir.API_TOKEN).symlink_to(victim)
    with pytest.raises(OSError):
        statedir.secret(folder, statedir.API_TOKEN)
    (folder / "log").symlink_to(victim)
    with pytest.raises(OSError):
        statedir.write_private(folder / "log", b"overwritten")
    assert victim.read_text() == "precious\n"


async def test_up_refuses_a_state_folder_that_is_a_symlink(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (tmp_path / ".ferry").symlink_to(other)
    f = FerryProcess(tmp_path)
    f.write_routes(hello())
    result = ferry_cli("up", str(f.routes), "--api", f"127.0.0.1:{f.api_port}", cwd=tmp_path)
    assert result.returncode == 1 and "not a plain folder" in result.stderr
    assert not any(other.iterdir())


def test_envoys_admin_stays_on_loopback(tmp_path):
    with pytest.raises(ValueError, match="keep it on 127.0.0.1"):
        bootstrap(BootstrapOptions(node_id="g", admin_host="0.0.0.0"))
    for command in (["bootstrap", "--admin", "0.0.0.0:9901"], ["up", "routes.yaml", "--admin", "10.0.0.1:9901"]):
        result = ferry_cli(*command, cwd=tmp_path)
        assert result.returncode == 2 and "loopback" in result.stderr


async def test_the_gateway_has_envoys_edge_settings(ferry):
    """Envoy's edge best practices: a deadline for request headers, bounded idle streams and connections, headers
    with underscores refused, paths normalized; the overload manager bounds heap and connections."""
    f = ferry()
    f.write_routes(hello())
    await f.start()
    await f.wait_converged()
    status, body = await _get(f"http://127.0.0.1:{f.admin_port}/config_dump?resource=dynamic_listeners")
    assert status == 200
    (listener,) = [entry["active_state"]["listener"] for entry in json.loads(body)["configs"]]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["request_headers_timeout"] == "10s" and hcm["stream_idle_timeout"] == "300s"
    assert hcm["common_http_protocol_options"]["headers_with_underscores_action"] == "REJECT_REQUEST"
    assert hcm["normalize_path"] and hcm["merge_slashes"]
    assert hcm["path_with_escaped_slashes_action"] == "UNESCAPE_AND_REDIRECT"
    status, body = await _get(f"http://127.0.0.1:{f.admin_port}/config_dump")
    (dump,) = [c for c in json.loads(body)["configs"] if "bootstrap" in c]
    names = {m["name"] for m in dump["bootstrap"]["overload_manager"]["resource_monitors"]}
    assert names == {"envoy.resource_monitors.fixed_heap", "envoy.resource_monitors.global_downstream_max_connections"}
    status, _ = await _get(f.gateway, Host="hello.localhost", **{"x_forwarded_for": "1.2.3.4"})
    assert status == 400  # a header with an underscore


async def test_a_remote_gateways_stats_are_read_through_its_read_only_listener(ferry, tmp_path):
    """A gateway from `ferry bootstrap`: ferry reads its requests (for the autoscaler and rollouts) on its stats
    listener, at the address its xDS connection comes from; its admin API is never asked."""
    f = ferry(envoy=False)  # only the remote gateway serves, so only its stats can show the load
    f.write_routes(hello(scale="{min: 1}"))
    await f.start()
    admin, stats = free_port(), free_port()
    bootstrap = ferry_cli("bootstrap", "--node-id", "remote", "--xds", f"127.0.0.1:{f.xds_port}",
                           "--admin", f"127.0.0.1:{admin}", "--stats", f"127.0.0.1:{stats}",
                           "--listen", f"127.0.0.1:{f.gateway_port}", cwd=tmp_path)
    assert bootstrap.returncode == 0, bootstrap.stderr
    (tmp_path / "remote.yaml").write_text(bootstrap.stdout)
    envoy = subprocess.Popen([envoy_binary(), "-c", str(tmp_path / "remote.yaml"), "--use-dynamic-base-id",
                              "-l", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        status = await f.wait_converged()
        (gateway,) = [g for g in status["gateways"] if g["node"] == "remote"]
        assert gateway["stats"] == f"127.0.0.1:{stats}"

        async def load_seen() -> bool:
            observed = (await f.status())["revisions"]["hello-00001"]["autoscaling"]["observed"]
            return (observed["rps"] or 0) > 1

        async with Load(f.gateway, "hello.localhost", concurrency=2) as load:
            await wait_until(load_seen, 30, f"the remote gateway's requests in the autoscaler; log:\n{f.log_text}")
        assert load.failures == 0
    finally:
        envoy.terminate()
        envoy.wait(timeout=10)


async def test_a_new_activator_key_reaches_an_adopted_activator(ferry, tmp_path):
    """Rotating the activator key across a restart that keeps the data plane: the adopted activator is told the new
    key, takes the old one for a minute more (gateways switch with the next route push), and answers requests at
    zero throughout."""
    f = ferry()
    f.write_routes(hello(scale="{min: 0, initial: 0}"))
    await f.start()
    await f.wait_converged()
    old = f.activator_key
    activator_pid = f.dataplane()["activator activator"]
    await f.kill()
    key_file = tmp_path / ".ferry" / "activator-key"
    key_file.write_text("a-new-key-for-the-activator\n")
    await f.start()
    await f.wait_converged()
    assert f.dataplane()["activator activator"] == activator_pid  # adopted, not restarted
    assert (await _get(f.gateway, Host="hello.localhost"))[0] == 200  # woken through the new key
    direct = f"http://127.0.0.1:{f.activator_port}/"
    for key in (f.activator_key, old):
        assert (await _get(direct, **{"ferry-revision": "hello-00001", **key}))[0] == 200
    assert (await _get(direct, **{"ferry-revision": "hello-00001", "ferry-activator-key": "guess"}))[0] == 403
    assert "activator key replaced" in (tmp_path / ".ferry" / "activator.log").read_text()
