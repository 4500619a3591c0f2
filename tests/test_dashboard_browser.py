"""The dashboard in a real headless browser: Debian's chromium driven by Selenium (through chromedriver), against a
real `ferry up` with its Envoy and the example service. The login link comes from the real `ferry dashboard`;
the page must show the example service and its split, chart its requests, then a `ferry traffic` change within 2 s, with no
Content-Security-Policy violation; a screenshot is saved under the test's tmp path and its path printed (and
recorded as the test's `screenshot` property in JUnit XML).

Skipped, saying so loudly, when chromium, chromedriver or selenium is missing (`apt-get install chromium
chromium-driver`; .ci/run installs them).
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from .ferry_process import hello
from .helpers import wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1100"]
SPLIT = ("traffic:", "  - {revision: hello-00001, percent: 100}", "  - {latestRevision: true, percent: 0, tag: next}")

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
except ImportError:  # pragma: no cover - the test extra installs it
    webdriver = None

_missing = [what for what, ok in (("chromium", Path(CHROMIUM).exists()), ("chromedriver", Path(CHROMEDRIVER).exists()),
                                  ("selenium", webdriver is not None)) if not ok]
pytestmark = pytest.mark.skipif(
    bool(_missing), reason=f"!!! DASHBOARD BROWSER TEST NOT RUN: {', '.join(_missing)} missing "
                           "(apt-get install -y chromium chromium-driver; pip install -e '.[test]') !!!")


def start_chromium(workdir: Path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={workdir / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=str(workdir / "chromedriver.log"))
    return webdriver.Chrome(options=options, service=service)


def traffic_rows(driver) -> dict[str, str]:
    """The split the page shows: revision -> percent (main split rows only)."""
    return driver.execute_script(  # in one step: the page redraws the table while it is read
        "const r = {}; for (const tr of document.querySelectorAll('#traffic tr[data-revision]'))"
        " if (tr.dataset.percent) r[tr.dataset.revision] = tr.dataset.percent; return r;")


async def ferry_command(f, *args: str) -> str:
    """A `ferry` command as a user runs it next to this ferry (it finds the token itself); its stdout."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ferry", *args, "--api", f"127.0.0.1:{f.api_port}", cwd=f.workdir, env=f.env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, (args, out, err)
    return out.decode()


async def test_the_dashboard_shows_the_service_and_a_traffic_change_within_2s(ferry, tmp_path, record_property):
    f = ferry()
    f.write_routes(hello("one"))
    await f.start()
    await f.wait_converged()
    f.write_routes(hello("two", extra=SPLIT))  # hello-00002 at 0 %, tagged next

    async def both_ready() -> bool:
        status = await f.status()
        revisions = status["revisions"]
        return (await f.converged() and revisions.get("hello-00002", {}).get("state") == "ready"
                and any(t.get("tag") == "next" for t in status["services"]["hello"]["traffic"]))

    await wait_until(both_ready, 30, f"hello-00002 ready and tagged; log:\n{f.log_text}")

    link = (await ferry_command(f, "dashboard")).strip()
    assert link.startswith(f"http://127.0.0.1:{f.api_port}/ui/login?code="), link
    driver = await asyncio.to_thread(start_chromium, tmp_path)
    try:
        driver.get(link)
        await wait_until(lambda: driver.current_url.endswith("/ui"), 10, f"the login to land on /ui: {driver.current_url}")
        await wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, '#services li[data-service="hello"]'), 10,
                         "the example service in the list")
        await wait_until(lambda: traffic_rows(driver) == {"hello-00001": "100"}, 10, "the file's split in the page")
        assert driver.find_element(By.ID, "service-name").text == "hello"
        assert "tag next" in driver.find_element(By.ID, "traffic").text
        assert "hello-00002" in driver.find_element(By.ID, "revisions").text
        await wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, "#gateways tr[data-node]"), 5, "a gateway row")
        assert "yes" in driver.find_element(By.ID, "gateways").text  # connected and in sync

        async with aiohttp.ClientSession() as client:  # requests for the charts (observe.py reads every 5 s)
            async def answered() -> bool:
                for _ in range(5):
                    async with client.get(f.gateway, headers={"Host": "hello.localhost"}) as response:
                        assert response.status == 200
                return bool(driver.find_elements(By.CSS_SELECTOR, '#charts [data-revision="hello-00001"]'))

            await wait_until(answered, 40, "hello-00001's requests charted", interval=0.2)
        assert "req/s" in driver.find_element(By.ID, "charts").text

        await ferry_command(f, "traffic", "hello", "hello-00001=50", "hello-00002=50")
        changed_at = time.monotonic()
        await wait_until(lambda: traffic_rows(driver) == {"hello-00001": "50", "hello-00002": "50"}, 2.0,
                         "the traffic change in the page within 2 s")
        print(f"traffic change shown {1000 * (time.monotonic() - changed_at):.0f} ms after `ferry traffic` returned")

        assert "live" in driver.find_element(By.ID, "live").text  # no fetch failed
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors  # no script error, no refused load, no Content-Security-Policy violation
        screenshot = tmp_path / "dashboard.png"
        assert driver.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
        record_property("screenshot", str(screenshot))
        print(f"dashboard screenshot: {screenshot}")

        driver.get(link)  # the same link again: spent
        assert "does not log in" in driver.find_element(By.TAG_NAME, "h1").text
    finally:
        await asyncio.to_thread(driver.quit)
