"""The CLI as users type it, and ferry's process lifecycle: clean stops, no orphans, history kept."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import textwrap
from pathlib import Path

import aiohttp
import pytest
import yaml

from ferry.envoy.process import envoy_binary

from . import ferry_process
from .ferry_process import FerryProcess, ferry_cli, get
from .helpers import wait_until

pytestmark = pytest.mark.timeout(180)


def hello(message: str = "v1", initial: int = 1) -> str:
    return ferry_process.hello(message, scale=f"{{initial: {initial}}}")


def test_validate_accepts_the_example_and_rejects_bad_files(tmp_path):
    example = Path(__file__).resolve().parent.parent / "examples" / "hello" / "routes.yaml"
    ok = ferry_cli("validate", str(example))
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout

    bad = tmp_path / "routes.yaml"
    bad.write_text(
        "services:\n"
        "  hello:\n"
        "    template: {command: [python3, app.py]}\n"
        "    traffic:\n"
        "      - revision: hello-00007\n"
        "        percent: 100\n"
    )
    result = ferry_cli("validate", str(bad))
    assert result.returncode == 1
    assert "routes.yaml:5" in result.stderr and "services.hello.traffic[0].revision" in result.stderr
    assert "hello-00007" in result.stderr
    assert not (tmp_path / ".ferry" / "state.db").exists()  # validate writes no state


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_bootstrap_is_accepted_by_envoy(tmp_path, delta):
    args = ["bootstrap", "--node-id", "edge-7", "--group", "edge", "--listen", "127.0.0.1:8181"]
    result = ferry_cli(*args, *([] if delta else ["--sotw"]))
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["node"] == {
        "id": "edge-7", "cluster": "edge",
        "metadata": {"ferry.stats": "9902", "ferry.listen": "127.0.0.1:8181"},  # read at the gateway's own address
    }
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    (stats,) = config["static_resources"]["listeners"]
    assert stats["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9902}
    assert config["dynamic_resources"]["ads_config"]["api_type"] == ("DELTA_GRPC" if delta else "GRPC")
    path = tmp_path / "bootstrap.yaml"
    path.write_text(result.stdout)
    check = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


async def test_apply_status_and_a_rejected_apply(ferry, tmp_path):
    f = ferry()
    f.write_routes(hello())
    await f.start()
    await f.wait_converged()
    api = f"127.0.0.1:{f.api_port}"

    other = tmp_path / "other.yaml"
    other.write_text(f.routes.read_text().replace("hello:", "hola:", 1))
    applied = await asyncio.to_thread(ferry_cli, "apply", str(other), "--api", api, "--token-file", str(f.token_file))
    assert applied.returncode == 0, applied.stderr
    await wait_until(lambda: _has_service(f, "hola"), 30, "the applied file's service")

    broken = tmp_path / "broken.yaml"
    broken.write_text(f.routes.read_text().replace("hello:", "hola:", 1).replace("scale: {initial: 1}", "scale: {initial: -1}"))
    rejected = await asyncio.to_thread(ferry_cli, "apply", str(broken), "--api", api, "--token-file", str(f.token_file))
    assert rejected.returncode == 1
    assert "broken.yaml" in rejected.stderr and "services.hola.template.scale.initial" in rejected.stderr
    status = await f.status()
    assert list(status["services"]) == ["hola"] and "broken.yaml" in status["config"]["last_error"]

    table = await asyncio.to_thread(ferry_cli, "status", "--api", api, "--token-file", str(f.token_file))
    assert table.returncode == 0
    assert "hola" in table.stdout and "ferry-local" in table.stdout and "http://hola.localhost" in table.stdout
    as_json = await asyncio.to_thread(ferry_cli, "status", "--api", api, "--token-file", str(f.token_file), "--json")
    assert json.loads(as_json.stdout)["services"]["hola"]["latest_ready"] == "hola-00001"
    one = await asyncio.to_thread(ferry_cli, "status", "hola", "--api", api, "--token-file", str(f.token_file), "--json")
    assert list(json.loads(one.stdout)["revisions"]) == ["hola-00001"]
    missing = await asyncio.to_thread(ferry_cli, "status", "nope", "--api", api, "--token-file", str(f.token_file))
    assert missing.returncode == 1 and "no service 'nope'" in missing.stderr


async def _has_service(f: FerryProcess, name: str) -> bool:
    status = await f.status()
    return name in status["services"] and status["services"][name]["routed"] and "hello" not in status["services"]


def _children(pid: int) -> set[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return set()
    return {int(p) for p in text.split()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["sigterm", "sigint", "sigkill"])
async def test_stopping_ferry_leaves_no_process(ferry, sig):
    f = ferry()
    f.write_routes(hello(initial=2))
    await f.start()
    await f.wait_converged()
    await wait_until(lambda: _ready(f, "hello-00001", 2), 30, "two ready instances")
    children = _children(f.proc.pid)
    assert len(children) == 4, children  # the activator, Envoy and two instances
    f.proc.send_signal(sig)
    code = await asyncio.wait_for(f.proc.wait(), 30)
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 0)
    if sig == signal.SIGKILL:  # a crash of ferry is no outage: its data plane serves on, until `ferry down`
        assert all(_alive(p) for p in children), children
        down = await asyncio.to_thread(ferry_cli, "down", str(f.routes))
        assert down.returncode == 0 and down.stdout.count("stopped") == 4, down.stdout + down.stderr
    await wait_until(lambda: not any(_alive(p) for p in children), 15, f"children {children} to exit")


async def test_down_given_only_the_state_folder_stops_a_data_plane_whose_ferry_is_gone(ferry, tmp_path):
    """`ferry up --state` elsewhere, then ferry SIGKILLed: its data plane serves on, and `ferry down --state DIR`,
    run from a folder that has nothing to do with it and without the routes file, stops all of it."""
    state = tmp_path / "elsewhere" / "state.db"
    f = ferry(extra=("--state", str(state)))
    f.write_routes(hello(initial=2))
    await f.start()
    await f.wait_converged()
    await wait_until(lambda: _ready(f, "hello-00001", 2), 30, "two ready instances")
    running = f.dataplane()
    assert sorted(running) == ["activator activator", "envoy ferry-local", "instance hello-00001/1",
                               "instance hello-00001/2"], running
    assert not (f.routes.parent / ".ferry").exists()  # nothing beside the routes file: only the state folder knows
    await f.kill()
    assert all(_alive(p) for p in running.values()), running

    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    here = await asyncio.to_thread(ferry_cli, "down", cwd=unrelated)  # no --state: .ferry here, where nothing runs
    assert here.returncode == 0 and here.stdout.strip() == f"nothing runs from {unrelated / '.ferry'}", here
    assert all(_alive(p) for p in running.values()), running

    down = await asyncio.to_thread(ferry_cli, "down", "--state", str(state.parent), cwd=unrelated)
    assert down.returncode == 0, down.stderr
    assert sorted(down.stdout.splitlines()) == sorted(f"stopped {what} (pid {pid})" for what, pid in running.items())
    await wait_until(lambda: not any(_alive(p) for p in running.values()), 15, f"{running} to exit")
    assert f.dataplane() == {}
    again = await asyncio.to_thread(ferry_cli, "down", "--state", str(state), cwd=unrelated)  # state.db names it too
    assert again.returncode == 0 and again.stdout.strip() == f"nothing runs from {state.parent}", again


async def test_restart_keeps_revision_history(ferry):
    f = ferry()
    f.write_routes(hello("v1"))
    await f.start()
    await f.wait_converged()
    f.write_routes(hello("v2"))
    await wait_until(lambda: _latest_ready(f, "hello-00002"), 30, "hello-00002 ready")
    await f.stop()

    f.write_routes(hello("v2"))  # the same template: no new revision
    await f.start()
    status = await f.wait_converged()
    assert status["services"]["hello"]["latest_created"] == "hello-00002"
    assert status["services"]["hello"]["latest_ready"] == "hello-00002"
    f.write_routes(hello("v1"))  # an older template again is a new revision, as in Knative
    await wait_until(lambda: _latest_ready(f, "hello-00003"), 30, "hello-00003 ready")


async def _ready(f: FerryProcess, revision: str, count: int) -> bool:
    return (await f.status())["revisions"][revision]["ready"] == count


async def _latest_ready(f: FerryProcess, name: str) -> bool:
    return (await f.status())["services"]["hello"]["latest_ready"] == name


async def test_a_crashed_envoy_is_restarted_and_serves_again(ferry):
    f = ferry()
    f.write_routes(hello())
    await f.start()
    await f.wait_converged()
    envoy_pid = f.dataplane()["envoy ferry-local"]
    os.kill(envoy_pid, signal.SIGKILL)
    await wait_until(lambda: _restarted_envoy(f, envoy_pid), 30, "a new Envoy")
    await f.wait_converged()
    async with aiohttp.ClientSession() as session:

        async def serving() -> bool:
            # Envoy ACKs its listener before its workers have bound the port: wait for the bind itself.
            try:
                return await get(session, f.gateway, "hello.localhost") == (200, "hello-00001")
            except aiohttp.ClientConnectorError:
                return False

        await wait_until(serving, 10, "the restarted Envoy to serve")


def _restarted_envoy(f: FerryProcess, old_pid: int) -> bool:
    pid = f.dataplane().get("envoy ferry-local")
    return pid is not None and pid != old_pid and _alive(pid)


async def test_a_save_made_while_ferry_starts_is_applied(ferry):
    f = ferry()
    f.write_routes(hello("v1"))
    await f.start()  # returns as soon as the API answers, before the file watch is surely registered
    f.write_routes(hello("v2"))
    await wait_until(lambda: _latest_ready(f, "hello-00002"), 30, "the save made during start-up")


async def test_a_configmap_style_update_through_a_swapped_symlink_is_applied(ferry, tmp_path):
    """Kubernetes mounts a ConfigMap as routes.yaml -> ..data/routes.yaml, ..data -> ..<timestamp>/, and
    updates it by writing a new timestamped folder and renaming a new ..data symlink over the old one."""
    f = ferry(envoy=False)
    mount = tmp_path / "configmap"
    mount.mkdir()

    def publish(version: str, message: str) -> None:
        text = f"gateway:\n  listen: 127.0.0.1:{f.gateway_port}\n  domain: localhost\nservices:\n"
        text += textwrap.indent(textwrap.dedent(hello(message)).strip("\n"), "  ") + "\n"
        (mount / version).mkdir()
        (mount / version / "routes.yaml").write_text(text)
        (mount / "..data_tmp").symlink_to(version)
        os.replace(mount / "..data_tmp", mount / "..data")

    publish("..v1", "v1")
    (mount / "routes.yaml").symlink_to("..data/routes.yaml")
    f.routes = mount / "routes.yaml"
    await f.start()
    await wait_until(lambda: _latest_ready(f, "hello-00001"), 30, "the first revision")
    publish("..v2", "v2")
    await wait_until(lambda: _latest_ready(f, "hello-00002"), 30, f"the ConfigMap update; log:\n{f.log_text}")
