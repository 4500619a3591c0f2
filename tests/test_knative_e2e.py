"""`ferry up` of a Knative Service file with real Envoy: two Services in one file, the gateway from --listen and
--domain (which hold for every later apply), a second apply that splits 70/30 with a tag, and the export round
trip: `ferry export` of the running services applied back makes no new revision."""

from __future__ import annotations

import asyncio
import json
import sys

import aiohttp
import pytest

from ferry.routing import HostPort, load_routes
from ferry.routing.overrides import Overrides
from ferry.routing.revisions import template_digest

from .ferry_process import HELLO_APP, FerryProcess, ferry_cli, get
from .helpers import wait_until
from .load import count_revisions

pytestmark = pytest.mark.timeout(240)


def service(name: str, message: str, *, traffic: str = "", annotations: str = "") -> str:
    """A Knative Service running the example app (its command, as backend local runs it)."""
    return f"""apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: {name}
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/initial-scale: "1"
        autoscaling.knative.dev/max-scale: "3"{annotations}
    spec:
      timeoutSeconds: 60
      containers:
        - image: ghcr.io/knative/helloworld-go:latest
          command: [{json.dumps(sys.executable)}]
          args: [{json.dumps(str(HELLO_APP))}]
          env:
            - name: MESSAGE
              value: {json.dumps(message)}
          readinessProbe:
            httpGet:
              path: /healthz
{traffic}"""


SPLIT = """  traffic:
    - revisionName: hello-00001
      percent: 70
    - latestRevision: true
      percent: 30
      tag: candidate
"""


async def cli(f: FerryProcess, *args: str):
    return await asyncio.to_thread(ferry_cli, *args, "--api", f"127.0.0.1:{f.api_port}", "--token-file",
                                   str(f.token_file), cwd=f.workdir)


async def split_is(f: FerryProcess, expected: dict[str, int]) -> bool:
    status = await f.status()
    got = {t["revision"]: t["percent"] for t in status["services"]["hello"]["traffic"] if "percent" in t}
    return got == expected


async def revisions(f: FerryProcess, name: str) -> list[str]:
    return sorted(r["name"] for r in await f.get_json(f"/revisions/{name}"))


async def test_a_knative_file_serves_splits_tags_and_exports_back_to_the_same_revisions(ferry, tmp_path):
    f = ferry()
    flags = ("--listen", f"127.0.0.1:{f.gateway_port}", "--domain", "localhost")
    f.extra = flags
    first = service("hello", "v1") + "---\n" + service("other", "o1")
    f.routes.write_text(first)  # the path's name does not matter: the content says it is Knative
    await f.start()
    status = await f.wait_converged()
    assert status["services"]["hello"]["url"] == f"http://hello.localhost:{f.gateway_port}"
    async with aiohttp.ClientSession() as session:
        assert await get(session, f.gateway, "hello.localhost") == (200, "hello-00001")
        assert await get(session, f.gateway, "other.localhost") == (200, "other-00001")

    # A second apply: a new template for hello, 70/30 between its two revisions, the new one tagged.
    second = service("hello", "v2", traffic=SPLIT) + "---\n" + service("other", "o1")
    sent = tmp_path / "second.yaml"
    sent.write_text(second)
    applied = await cli(f, "apply", str(sent))
    assert applied.returncode == 0, applied.stderr
    await wait_until(lambda: split_is(f, {"hello-00001": 70, "hello-00002": 30}), 60, "the 70/30 split")
    await f.wait_converged()
    counts = await count_revisions(f.gateway, "hello.localhost", 2000)  # the gateway --listen set, still
    assert sum(counts.values()) == 2000 and set(counts) <= {"hello-00001", "hello-00002"}, counts
    assert 67 <= counts["hello-00001"] / 2000 * 100 <= 73, counts
    assert await count_revisions(f.gateway, "candidate-hello.localhost", 200) == {"hello-00002": 200}
    assert await count_revisions(f.gateway, "other.localhost", 50) == {"other-00001": 50}

    # Export both running services and apply the manifests back: the same revisions, none new.
    before = {name: await revisions(f, name) for name in ("hello", "other")}
    assert before == {"hello": ["hello-00001", "hello-00002"], "other": ["other-00001"]}
    exported = []
    for name in ("hello", "other"):
        result = await cli(f, "export", name)
        assert result.returncode == 0, result.stderr
        exported.append(result.stdout)
    assert "metadata:\n  name: hello\n" in exported[0]
    # No revision name (none was given), only the annotations that differ from Knative's defaults:
    assert "spec:\n  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/max-scale: '3'\n" \
        "    spec:\n" in exported[0]
    assert "initial-scale" not in exported[0] and "timeoutSeconds: 60\n" in exported[0]
    assert "revisionName: hello-00001" in exported[0] and "tag: candidate" in exported[0]
    text = "---\n".join(exported)
    overrides = Overrides(listen=HostPort("127.0.0.1", f.gateway_port), domain="localhost")
    digests = {n: template_digest(s.template) for n, s in load_routes(sent, overrides=overrides).spec.services.items()}
    assert {n: template_digest(s.template) for n, s in load_routes(tmp_path / "exported.yaml", text,
                                                                   overrides=overrides).spec.services.items()} == digests
    exported_file = tmp_path / "exported.yaml"
    exported_file.write_text(text)
    checked = await asyncio.to_thread(ferry_cli, "validate", str(exported_file), *flags, "--state",
                                      str(f.workdir / ".ferry" / "state.db"))  # against the running history
    assert checked.returncode == 0 and "ok (2 services)" in checked.stdout, checked.stderr
    code, answer = await f.post("/apply", {"path": "exported.yaml", "content": text})
    assert code == 200, answer
    await f.wait_converged()
    assert {name: await revisions(f, name) for name in ("hello", "other")} == before
    status = await f.status()
    assert status["services"]["hello"]["latest_created"] == "hello-00002"
    assert not status["config"]["last_error"]
    assert await count_revisions(f.gateway, "candidate-hello.localhost", 20) == {"hello-00002": 20}
    # And the export of what now runs is the same text: a fixed point.
    again = await cli(f, "export", "hello")
    assert again.stdout == exported[0]
