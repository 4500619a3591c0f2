"""Request logs through a real Envoy: `gateway.accessLog: PATH` writes one JSON line per request with the revision
that answered, and never the client's Authorization header, cookies or query string."""

from __future__ import annotations

import json

import aiohttp
import pytest

from . import ferry_process
from .helpers import wait_until

pytestmark = pytest.mark.timeout(120)


async def test_the_access_log_names_the_revision_and_keeps_no_secrets(ferry, tmp_path):
    f = ferry()
    f.write_routes(ferry_process.hello("v1"), gateway="accessLog: logs/access.log")
    await f.start()
    await f.wait_converged()
    log = tmp_path / "logs" / "access.log"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{f.gateway}/?token=s3cret-query", headers={
                "Host": "hello.localhost", "Authorization": "Bearer s3cret-auth", "Cookie": "session=s3cret-cookie"}) as r:
            assert r.status == 200

    def lines() -> list[dict]:
        return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []

    await wait_until(lambda: any(entry.get("revision") == "hello-00001" for entry in lines()), 30,
                     "the request's line in the access log")
    entry = next(e for e in lines() if e.get("revision") == "hello-00001")
    assert entry["host"] == "hello.localhost" and entry["method"] == "GET" and str(entry["status"]) == "200"
    assert entry["service"] == "hello" and entry["path"] == "/" and entry["request_id"]
    assert "s3cret" not in log.read_text()
