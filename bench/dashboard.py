"""The dashboard at 10,000 services: first paint, search, and how soon a traffic change shows in the page.

Prints numbers and PASS/FAIL per target; it is not a test. Usage:

    python bench/dashboard.py [--services 10000] [--repeat 5] [--keep]

It runs `ferry up` (a real subprocess with its real local Envoy, free loopback ports, state in a temporary folder)
on N services x 2 revisions whose endpoints the file gives (bench/convergence.py's file 2: s<i>-a 100 %, s<i>-b
0 % tagged next; two example apps answer at those endpoints), and Debian's chromium (headless, via Selenium and
chromedriver) logged in with a one-time code.

1. The JSON the page polls, asked 20 times each with the token: a page of 50 services, a search, one service's
   detail, the overview; ferry's event-loop stalls over 20 ms meanwhile (ferry_event_loop_lag_seconds).
2. First paint: /ui loaded afresh `repeat` times: first-contentful-paint (the browser's Paint Timing) and
   "data shown" (navigation start -> the first poll's answers drawn: the list, the first service, the gateways).
3. Search: typing s9999 into the search box -> the list shows only it (150 ms of typing debounce included).
4. Update latency: with s<k> shown, its split changed `repeat` times by saving the file (as editors do) and
   `repeat` times by POST /traffic (what `ferry traffic` sends), each at a random moment of the page's 0.5 s poll;
   timed from os.replace() / the POST to the moment the page drew the new split (the page notes it; same clock).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Processes, api_token, find_envoy, free_port, log, machine, mmm  # noqa: E402
from convergence import loop_lag, routes_text, stalls_over  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HELLO_APP = ROOT / "examples" / "hello" / "app.py"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1000"]

TARGET_FIRST_PAINT_MS = 1000.0  # first-contentful-paint, the slowest of the loads
TARGET_DATA_SHOWN_MS = 2000.0  # navigation -> first data drawn, the slowest
TARGET_UPDATE_MS = 2000.0  # traffic change -> drawn, the slowest (the issue: "within 2 s")
TARGET_SEARCH_MS = 1000.0
TARGET_API_MS = 100.0  # any of the page's JSON calls, the slowest
TARGET_STALLS = 0  # event-loop stalls > 20 ms while the page's JSON is asked for


class Api:
    def __init__(self, port: int, auth: dict[str, str]):
        self.base, self.auth = f"http://127.0.0.1:{port}", auth

    def call(self, path: str, body: dict | None = None, timeout: float = 30) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method="POST" if data is not None else "GET",
                                         headers={**self.auth, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def json(self, path: str, body: dict | None = None) -> dict:
        status, raw = self.call(path, body)
        if status != 200:
            raise RuntimeError(f"{path}: {status} {raw[:300]!r}")
        return json.loads(raw)


def wait(condition, timeout: float, what: str, every: float = 0.01):
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def page_split(driver) -> dict[str, str]:
    return driver.execute_script(
        "const r = {}; for (const tr of document.querySelectorAll('#traffic tr[data-revision]'))"
        " if (tr.dataset.percent) r[tr.dataset.revision] = tr.dataset.percent; return r;")


def listed(driver) -> list[str]:
    return driver.execute_script("return [...document.querySelectorAll('#services li')].map(e => e.dataset.service)")


def run(n: int, repeat: int, workdir: Path, procs: Processes) -> tuple[list[tuple[str, str, float, float]], list]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    gateway, api_port, xds, admin, activator = (free_port() for _ in range(5))
    port_a, port_b = free_port(), free_port()
    for name, port in (("a", port_a), ("b", port_b)):
        env = {**os.environ, "PORT": str(port), "K_REVISION": name, "MESSAGE": name}
        procs.start(f"app {name}", [sys.executable, str(HELLO_APP)], env=env, stdout=subprocess.DEVNULL)
    routes = workdir / "routes.yaml"
    switched: set[int] = set()

    def save(second: bool = True) -> float:
        tmp = routes.with_suffix(".tmp")
        tmp.write_text(routes_text(n, gateway, port_a, port_b, second=second, switched=switched))
        at = time.time()
        os.replace(tmp, routes)
        return at

    save(second=False)  # one revision each; file 2 (two each, a split and a tag) once ferry is up
    token_args, auth = api_token(workdir)
    log(f"N={n}: starting ferry")
    with open(workdir / "ferry.log", "ab") as out:
        ferry = procs.start("ferry", [sys.executable, "-m", "ferry", "up", str(routes), "--state",
                                      str(workdir / "state.db"), "--api", f"127.0.0.1:{api_port}", "--xds",
                                      f"127.0.0.1:{xds}", "--admin", f"127.0.0.1:{admin}", "--activator",
                                      f"127.0.0.1:{activator}", "--cluster-linger", "3600", *token_args],
                            stdout=out, stderr=out, cwd=workdir)
    api = Api(api_port, auth)

    def converged() -> bool:
        if ferry.poll() is not None:
            raise RuntimeError(f"ferry exited; log:\n{(workdir / 'ferry.log').read_text()[-3000:]}")
        try:
            overview = api.json("/ui/api/overview")
        except (OSError, RuntimeError):
            return False
        return overview["services"] == n and overview["gateways_connected"] >= 1 and (
            overview["gateways_in_sync"] == overview["gateways_connected"])

    started = time.monotonic()
    wait(converged, 300, "ferry up with every service and its gateway in sync", every=0.5)
    log(f"N={n}: converged in {time.monotonic() - started:.1f} s")
    envoy = find_envoy(ferry.pid, admin)
    if envoy:
        procs.envoy_pids.add(envoy)
    wait(lambda: "ferry is up" in (workdir / "ferry.log").read_text(errors="replace"), 60, "ferry is up", every=0.1)
    time.sleep(0.5)  # its file watch starts on the next turn of its loop

    def tagged() -> bool:
        last = api.json(f"/ui/api/services/s{n - 1}")["service"]["traffic"]
        return any(t.get("tag") == "next" for t in last) and converged()

    save()
    wait(tagged, 300, "file 2 applied and served", every=0.5)

    results: list[tuple[str, str, float, float]] = []  # (what, figures, worst, target)
    rows: list[tuple[str, str]] = []

    # 1. the page's JSON
    lag_before = loop_lag(api.call("/metrics")[1].decode())
    for label, path in (("GET /ui/api/services (page of 50)", "/ui/api/services?limit=50"),
                        (f"GET /ui/api/services?q=s{n - 1} (a search)", f"/ui/api/services?q=s{n - 1}"),
                        (f"GET /ui/api/services/s{n // 2} (one service)", f"/ui/api/services/s{n // 2}"),
                        ("GET /ui/api/overview", "/ui/api/overview")):
        times, size = [], 0
        for _ in range(20):
            t0 = time.perf_counter()
            status, body = api.call(path)
            times.append((time.perf_counter() - t0) * 1000)
            assert status == 200, (path, status)
            size = len(body)
        results.append((label, f"{mmm(times)} ms ({size / 1024:.1f} KiB)", max(times), TARGET_API_MS))
    stalls = stalls_over(lag_before, loop_lag(api.call("/metrics")[1].decode()))
    results.append(("ferry loop stalls > 20 ms during those 80 calls", str(stalls), stalls, TARGET_STALLS))

    # 2. first paint
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={workdir / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        code = api.json("/ui/api/login", {})["path"]
        driver.get(api.base + code)
        wait(lambda: driver.execute_script("return document.body.dataset.updated"), 30, "the page's first data")
        paints, shown = [], []
        for _ in range(repeat):
            driver.get(api.base + "/ui")
            wait(lambda: driver.execute_script("return document.body.dataset.updated"), 30, "the page's first data")
            wait(lambda: driver.execute_script("return performance.getEntriesByName('first-contentful-paint').length"),
                 10, "the paint timing entry (it is reported a moment after the paint)")
            timing = driver.execute_script(
                "const p = performance.getEntriesByName('first-contentful-paint')[0];"
                "return [p ? p.startTime : null, Number(document.body.dataset.updated) - performance.timeOrigin];")
            paints.append(timing[0])
            shown.append(timing[1])
        results.append(("first contentful paint", f"{mmm(paints)} ms", max(paints), TARGET_FIRST_PAINT_MS))
        results.append(("navigation -> first data drawn", f"{mmm(shown)} ms", max(shown), TARGET_DATA_SHOWN_MS))

        # 3. search
        searches = []
        target = f"s{n - 1}"
        for _ in range(repeat):
            box = driver.find_element(By.ID, "search")
            box.send_keys(Keys.CONTROL, "a")
            box.send_keys(Keys.BACKSPACE)  # as typed: clear() sends no input event
            wait(lambda: len(listed(driver)) > 1, 10, "the unfiltered list")
            t0 = driver.execute_script("return Date.now()")
            box.send_keys(target)
            wait(lambda: listed(driver) == [target], 10, "the search")
            searches.append(driver.execute_script("return Date.now()") - t0)
        results.append((f"search {target} -> list shows it (150 ms debounce in)", f"{mmm(searches)} ms",
                        max(searches), TARGET_SEARCH_MS))

        # 4. update latency
        k = n // 2
        driver.get(api.base + f"/ui#s{k}")
        wait(lambda: page_split(driver) == {f"s{k}-a": "100"}, 30, f"s{k}'s split in the page")
        by_file, by_api, applied_after_save, drawn_after_apply, api_after_change, drawn_after_api = [], [], [], [], [], []

        def api_split() -> dict[str, str]:
            traffic = api.json(f"/ui/api/services/s{k}")["service"]["traffic"]
            return {t["revision"]: str(t["percent"]) for t in traffic if "percent" in t}
        for round_ in range(2 * repeat):
            time.sleep(random.uniform(0, 0.5))  # any moment of the page's 0.5 s poll, as a real change would be
            want = f"s{k}-b" if f"s{k}-a" in page_split(driver) else f"s{k}-a"
            if round_ % 2 == 0:
                switched.symmetric_difference_update({k})
                at = save()
                samples = by_file
            else:
                at = time.time()
                api.json(f"/traffic/s{k}", {"splits": [[want, 100]]})
                samples = by_api
            wait(lambda: api_split() == {want: "100"}, 30, f"{want} at 100 % in the API", every=0.01)
            seen = time.time() * 1000  # the JSON the page polls says it (polled every 10 ms here: ~1 ms each)
            wait(lambda: page_split(driver) == {want: "100"}, 30, f"{want} at 100 % in the page")
            drawn = float(driver.execute_script("return document.body.dataset.trafficShownAt"))
            samples.append(drawn - at * 1000)
            api_after_change.append(seen - at * 1000)
            drawn_after_api.append(drawn - seen)
            if samples is by_file:  # ferry's part (watch, load, apply) and the page's part
                applied = api.json("/ui/api/overview")["config"]["last_applied"] * 1000
                applied_after_save.append(applied - at * 1000)
                drawn_after_apply.append(drawn - applied)
            if round_ % 2 == 1:  # back to the file's split for the next save
                api.json(f"/traffic/s{k}", {"reset": True})
                wait(lambda: page_split(driver) == {(f"s{k}-b" if k in switched else f"s{k}-a"): "100"}, 30,
                     "the file's split again")
        results.append(("file saved -> new split drawn", f"{mmm(by_file)} ms", max(by_file), TARGET_UPDATE_MS))
        results.append(("POST /traffic -> new split drawn", f"{mmm(by_api)} ms", max(by_api), TARGET_UPDATE_MS))
        rows.append(("of a save: saved -> ferry applied it (its watch, load, apply)", f"{mmm(applied_after_save)} ms"))
        rows.append(("of a save: ferry applied it -> page drew it", f"{mmm(drawn_after_apply)} ms"))
        rows.append(("any change -> ferry's JSON shows it (polled every 10 ms)", f"{mmm(api_after_change)} ms"))
        rows.append(("ferry's JSON shows it -> page drew it (the page's part)", f"{mmm(drawn_after_api)} ms"))
        shot = workdir / f"dashboard-{n}.png"
        driver.save_screenshot(str(shot))
        rows.append(("screenshot", str(shot)))
    finally:
        driver.quit()
    rows.append(("ferry RSS", f"{_rss_mib(ferry.pid)} MiB"))
    return results, rows


def _rss_mib(pid: int) -> str:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return "?"
    match = re.search(r"VmRSS:\s+(\d+)", text)
    return f"{int(match.group(1)) / 1024:.0f}" if match else "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (log, screenshot)")
    args = parser.parse_args()
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        print("FAIL: needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)")
        return 2

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    procs = Processes()
    workdir = Path(tempfile.mkdtemp(prefix=f"ferry-dashboard-{args.services}-"))
    try:
        results, rows = run(args.services, args.repeat, workdir, procs)
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nDashboard at {args.services} services x 2 revisions ({args.repeat} repeats; min / median / max)")
    for key, value in machine():
        print(f"  {key}: {value}")
    failed = 0
    for what, figures, worst, target in results:
        ok = worst <= target
        failed += not ok
        print(f"  {'PASS' if ok else 'FAIL'}  {what}: {figures} (target <= {target:g})")
    for key, value in rows:
        print(f"  {key}: {value}{'' if args.keep or key != 'screenshot' else ' (removed; --keep keeps it)'}")
    print(f"{'PASS' if not failed else 'FAIL'}: {len(results) - failed}/{len(results)} targets met")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
