"""kn's verbs against a real `ferry up` with Envoy and the example app: `ferry service list|describe`,
`ferry revision list|describe`, `ferry wait` (ready, a command that cannot start, one that exits, a readiness probe
that never passes) and `-o json|yaml`."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp
import pytest
import yaml

from . import ferry_process
from .ferry_process import FerryProcess, ferry_cli, get

pytestmark = pytest.mark.timeout(180)

SPLIT = ("traffic:", "  - {revision: hello-00001, percent: 50}", "  - {latestRevision: true, percent: 50, tag: canary}")


def hello(message: str, *, extra: tuple[str, ...] = (), **env: str) -> str:
    return ferry_process.hello(message, scale="{initial: 1}", extra=extra, **env)


def broken(*command: str) -> str:
    argv = ", ".join(json.dumps(part) for part in command)
    return f"\n    hello:\n      template:\n        command: [{argv}]\n        readiness: {{path: /healthz}}\n"


async def cli(f: FerryProcess, *args: str, token: bool = True):
    """The ferry command, as a user runs it beside the routes file (with --token-file, or finding the token)."""
    auth = ("--token-file", str(f.token_file)) if token else ()
    return await asyncio.to_thread(ferry_cli, *args, "--api", f"127.0.0.1:{f.api_port}", *auth, cwd=f.workdir)


async def apply(f: FerryProcess, services: str) -> None:
    """Write the file and send it (`ferry apply` returns once it is applied: no race with the file watch)."""
    f.write_routes(services)
    applied = await cli(f, "apply", str(f.routes))
    assert applied.returncode == 0, applied.stderr


def rows(text: str) -> dict[str, list[str]]:
    """A kn table by its first column."""
    return {line.split()[0]: line.split() for line in text.splitlines()[1:]}


async def test_the_verbs_show_services_revisions_traffic_and_tags(ferry):
    f = ferry()
    f.write_routes(hello("v1"))
    await f.start()
    await f.wait_converged()
    url = f"http://hello.localhost:{f.gateway_port}"

    listed = await cli(f, "service", "list", token=False)  # the token found beside the routes file
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].split() == ["NAME", "URL", "LATEST", "AGE", "CONDITIONS", "READY", "REASON"]
    row = rows(listed.stdout)["hello"]
    assert row[1:3] == [url, "hello-00001"] and row[4:] == ["3", "OK", "/", "3", "True"]

    await apply(f, hello("v2", extra=SPLIT))
    started = time.monotonic()
    waited = await cli(f, "wait", "hello", "--timeout", "30s")
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert "service hello is ready after" in waited.stdout and "hello-00001 50%, hello-00002 50%" in waited.stdout
    assert time.monotonic() - started < 30
    async with aiohttp.ClientSession() as session:  # Ready means served: the new revision answers at once
        assert await get(session, f.gateway, "canary-hello.localhost") == (200, "hello-00002")

    described = await cli(f, "service", "describe", "hello")
    assert described.returncode == 0, described.stderr
    text = described.stdout
    assert f"URL:     {url}" in text
    assert "   50%  hello-00002 #canary [2]" in text and "   50%  hello-00001 [1]" in text
    assert "Replicas:  1/1" in text
    assert f"#canary  http://canary-hello.localhost:{f.gateway_port} -> hello-00002" in text
    assert [line.split()[:2] for line in text[text.index("Conditions:"):].splitlines()[2:]] == [
        ["++", "Ready"], ["++", "ConfigurationsReady"], ["++", "RoutesReady"]]

    revisions = await cli(f, "revision", "list", "--service", "hello")
    assert revisions.returncode == 0, revisions.stderr
    table = rows(revisions.stdout)
    assert table["hello-00002"][1:5] == ["hello", "50%", "canary", "2"]
    assert table["hello-00001"][1:4] == ["hello", "50%", "1"] and table["hello-00001"][-1] == "True"
    assert list(table) == ["hello-00002", "hello-00001"]  # newest first
    assert list(rows((await cli(f, "revision", "list")).stdout)) == ["hello-00002", "hello-00001"]

    revision = await cli(f, "revision", "describe", "hello-00002")
    assert revision.returncode == 0, revision.stderr
    for expected in ("Service:      hello", "Generation:   2", "Env:          MESSAGE=v2",
                     "Readiness:    GET /healthz", "Replicas:     1/1 (ready)", "Traffic:      50% #canary"):
        assert expected in revision.stdout, revision.stdout
    assert "app.py" in revision.stdout and "++   Ready" in revision.stdout

    # -o json and -o yaml on every verb: the API's answer, parsed back.
    for verb in (("service", "list"), ("service", "describe", "hello"), ("revision", "list"),
                 ("revision", "describe", "hello-00001"), ("wait", "hello"), ("status",), ("revisions", "hello")):
        for output, parse in (("json", json.loads), ("yaml", yaml.safe_load)):
            answer = await cli(f, *verb, "-o", output)
            assert answer.returncode == 0, (verb, answer.stderr)
            assert parse(answer.stdout), (verb, output)
    service = json.loads((await cli(f, "service", "describe", "hello", "-o", "json")).stdout)
    assert service["conditions"][0] == {"type": "Ready", "status": "True", "reason": None, "message": None,
                                        "severity": ""}
    assert [r["name"] for r in service["revisions"]] == ["hello-00002", "hello-00001"]
    one = yaml.safe_load((await cli(f, "revision", "describe", "hello-00001", "-o", "yaml")).stdout)
    assert one["template"]["env"] == {"MESSAGE": "v1"} and one["ready"] == 1 and one["created_at"] > 0

    for verb, error in ((("service", "describe", "nope"), "no service 'nope'"),
                        (("revision", "describe", "nope-00001"), "no revision 'nope-00001'"),
                        (("wait", "nope"), "no service 'nope'"), (("revision", "list", "-s", "nope"), "no service")):
        missing = await cli(f, *verb)
        assert missing.returncode == 1 and error in missing.stderr, (verb, missing.stderr)


async def test_wait_fails_with_the_reason_when_the_latest_revision_cannot_serve(ferry):
    f = ferry()
    f.write_routes(hello("v1"))
    await f.start()
    await f.wait_converged()

    # A program that does not exist: RevisionFailed within the error window, the previous revision serving on.
    await apply(f, broken("ferry-no-such-program"))
    started = time.monotonic()
    waited = await cli(f, "wait", "hello", "--timeout", "60s")
    assert waited.returncode == 1
    assert "ferry: service hello failed: RevisionFailed" in waited.stderr
    assert 'Revision "hello-00002" failed with message: failed to start' in waited.stderr
    assert "ferry-no-such-program: not found on PATH" in waited.stderr
    assert time.monotonic() - started < 20
    row = rows((await cli(f, "service", "list")).stdout)["hello"]
    assert row[2] == "hello-00001" and row[4:9] == ["1", "OK", "/", "3", "False"] and row[9] == "RevisionFailed"
    async with aiohttp.ClientSession() as session:
        assert await get(session, f.gateway, "hello.localhost") == (200, "hello-00001")
    revision = await cli(f, "revision", "describe", "hello-00002")
    assert "!!   Ready" in revision.stdout and "StartFailed" in revision.stdout, revision.stdout

    # A program that exits at once: it is restarted with backoff, and its log is named.
    await apply(f, broken(sys.executable, "-c", "import sys; sys.exit(3)"))
    waited = await cli(f, "wait", "hello", "--timeout", "60s")
    assert waited.returncode == 1 and "RevisionFailed" in waited.stderr
    assert "exited and is being restarted" in waited.stderr and "hello-00003-1.log" in waited.stderr

    # A readiness probe that never passes: not a failure, a timeout that says what it waits for.
    await apply(f, hello("v4", READY_DELAY="600"))
    started = time.monotonic()
    waited = await cli(f, "wait", "hello", "--timeout", "3s")
    assert waited.returncode == 1
    assert "ferry: service hello is not ready after 3s: Deploying" in waited.stderr
    assert "revision hello-00004 is not ready yet: 0/1 instances ready" in waited.stderr
    assert 3 <= time.monotonic() - started < 15
    listed = json.loads((await cli(f, "revision", "list", "-o", "json")).stdout)
    assert listed[0]["name"] == "hello-00004" and listed[0]["conditions"][0]["reason"] == "Deploying"
