"""ferry's example app: a tiny threaded HTTP/1.1 server that says which revision answered.

Stdlib only, so running the example needs nothing beyond Python. It follows the Knative runtime contract:
listen on 127.0.0.1:$PORT, name yourself from $K_REVISION, drain gracefully on SIGTERM.

Paths:
  /healthz  200 once listening (503 for READY_DELAY seconds first)
  /env      JSON of PORT, K_SERVICE, K_CONFIGURATION, K_REVISION, MESSAGE and the pid
  /stats    JSON {"inflight": requests in flight besides this one, "served": requests answered,
            "max_app_inflight": most non-admin requests ever in flight at once (a breaker test reads it)}
  /headers  JSON of the request headers (what the gateway added)
  anything  "<K_REVISION>: <MESSAGE>\\n" with header x-revision (subject to LATENCY_MS and ERROR_RATE)

Knobs (environment): STARTUP_DELAY (s before listening: a slow cold start), READY_DELAY (s after
listening before /healthz says 200), LATENCY_MS (added to each request), ERROR_RATE (0..1 fraction answered
500), MESSAGE (default "hello").
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REVISION = os.environ.get("K_REVISION", "hello")
MESSAGE = os.environ.get("MESSAGE", "hello")
STARTUP_DELAY = float(os.environ.get("STARTUP_DELAY", "0") or 0)
READY_DELAY = float(os.environ.get("READY_DELAY", "0") or 0)
LATENCY_S = float(os.environ.get("LATENCY_MS", "0") or 0) / 1000.0
ERROR_RATE = float(os.environ.get("ERROR_RATE", "0") or 0)
ADMIN_PATHS = {"/healthz", "/env", "/stats", "/headers"}  # never delayed or failed, so probes and tests stay reliable


class State:
    """Counts in-flight requests so SIGTERM can wait for exactly those."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.inflight = 0
        self.served = 0
        self.app_inflight = 0  # requests outside ADMIN_PATHS
        self.max_app_inflight = 0
        self.stopping = False
        self.ready_at = 0.0


STATE = State()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: Envoy pools connections
    disable_nagle_algorithm = True  # one small response per request; don't wait for delayed ACKs
    server_version = "ferry-hello"

    def log_message(self, format: str, *args: object) -> None:  # quiet: no access log
        pass

    def _handle(self) -> None:
        with STATE.cond:
            STATE.inflight += 1
        try:
            self._drain_body()
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                ready = time.monotonic() >= STATE.ready_at
                self._reply(200 if ready else 503, b"ok\n" if ready else b"starting\n")
            elif path == "/env":
                env = {k: os.environ.get(k) for k in ("PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION", "MESSAGE")}
                env["PID"] = os.getpid()
                self._reply(200, json.dumps(env).encode() + b"\n", "application/json")
            elif path == "/headers":
                headers = {k.lower(): v for k, v in self.headers.items()}
                self._reply(200, json.dumps(headers).encode() + b"\n", "application/json")
            elif path == "/stats":
                with STATE.cond:
                    stats = {"inflight": STATE.inflight - 1, "served": STATE.served,
                             "max_app_inflight": STATE.max_app_inflight}
                self._reply(200, json.dumps(stats).encode() + b"\n", "application/json")
            else:
                self._app()
        finally:
            with STATE.cond:
                STATE.inflight -= 1
                STATE.served += 1
                STATE.cond.notify_all()

    def _app(self) -> None:
        with STATE.cond:
            STATE.app_inflight += 1
            STATE.max_app_inflight = max(STATE.max_app_inflight, STATE.app_inflight)
        try:
            if LATENCY_S > 0:
                time.sleep(LATENCY_S)
            if ERROR_RATE > 0 and random.random() < ERROR_RATE:
                self._reply(500, f"{REVISION}: injected error\n".encode())
            else:
                self._reply(200, f"{REVISION}: {MESSAGE}\n".encode())
        finally:
            with STATE.cond:
                STATE.app_inflight -= 1

    def _drain_body(self) -> None:
        """Read the request body so the next request on this keep-alive connection parses."""
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self.close_connection = True  # not worth decoding for an example app

    def _reply(self, status: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-revision", REVISION)
        if STATE.stopping:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle


class Server(ThreadingHTTPServer):
    daemon_threads = True  # idle keep-alive connections must not keep a stopping process alive
    request_queue_size = 1024


def main() -> int:
    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    if STARTUP_DELAY > 0:
        if stop.wait(STARTUP_DELAY):
            return 0
    port = int(os.environ.get("PORT", "8080"))
    server = Server(("127.0.0.1", port), Handler)
    STATE.ready_at = time.monotonic() + READY_DELAY
    # A short poll interval only bounds how long shutdown() takes to stop the accept loop.
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="accept", daemon=True)
    thread.start()
    print(f"{REVISION}: listening on 127.0.0.1:{port}", flush=True)

    stop.wait()
    # Stop accepting, then wait for the requests already being handled; idle connections just die with us.
    with STATE.cond:
        STATE.stopping = True
        print(f"{REVISION}: {received[0]}, draining {STATE.inflight} in-flight request(s)", flush=True)
    server.shutdown()
    server.server_close()
    with STATE.cond:
        STATE.cond.wait_for(lambda: STATE.inflight == 0)
    print(f"{REVISION}: exiting", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
