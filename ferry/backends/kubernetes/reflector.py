"""List+watch in a thread, like client-go's reflector: list, watch from the list's resourceVersion, re-list
after 410 Gone, back off while the API is away; events reach the event loop with call_soon_threadsafe."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import Any, Callable

from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException

from .api import reason, resource_version, status
from .manifests import SELECTOR

log = logging.getLogger("ferry.backends.kubernetes")


class _RawWatch(k8s_watch.Watch):
    """Events as plain dicts: no model deserialization (ferry reads a few fields; strict models reject partial objects)."""

    def get_return_type(self, func: Any) -> None:  # noqa: D102
        return None


Deliver = Callable[[str, Any], None]  # ("SYNC", ([items], list rv)) | ("ADDED"|"MODIFIED"|"DELETED", obj), on the loop


class Reflector:
    """List, then watch from the list's resourceVersion, forever; re-list after 410 Gone; back off on errors."""

    def __init__(
        self,
        name: str,
        list_func: Callable[..., Any],
        namespace: str,
        loop: asyncio.AbstractEventLoop,
        deliver: Deliver,
        *,
        watch_timeout_s: int,
        connect_timeout_s: float,
        backoff_min_s: float,
        backoff_max_s: float,
    ) -> None:
        self.name = name
        self._list = list_func
        self._namespace = namespace
        self._loop = loop
        self._deliver = deliver
        self._watch_timeout_s = watch_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._backoff_min_s = backoff_min_s
        self._backoff_max_s = backoff_max_s
        self._stop = threading.Event()
        self._watch: _RawWatch | None = None
        self._thread = threading.Thread(target=self._run, name=f"ferry-kube-{name}", daemon=True)
        self.synced = asyncio.Event()  # set (on the loop) once the first list arrived
        self.lists = 0  # number of lists done (1 + one per 410 or recovery)
        self.failing_since: float | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        w = self._watch
        if w is not None:
            w.stop()  # shuts the socket down: a blocked read returns at once

    def join(self, timeout: float) -> bool:
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _post(self, kind: str, payload: Any) -> None:
        if self._stop.is_set():
            return
        try:
            self._loop.call_soon_threadsafe(self._deliver, kind, payload)
        except RuntimeError:  # loop closed under us: we are shutting down
            self._stop.set()

    def _post_synced(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self.synced.set)
        except RuntimeError:
            self._stop.set()

    def _relist(self) -> str:
        resp = self._list(
            self._namespace, label_selector=SELECTOR, _preload_content=False,
            _request_timeout=(self._connect_timeout_s, max(30.0, self._connect_timeout_s)),
        )
        try:
            if not 200 <= resp.status <= 299:
                raise ApiException(status=resp.status, reason=resp.reason)
            body = json.loads(resp.data)
        finally:
            resp.release_conn()
        self.lists += 1
        rv = str(body.get("metadata", {}).get("resourceVersion") or "")
        self._post("SYNC", (body.get("items") or [], resource_version(body)))
        self._post_synced()
        return rv

    def _run(self) -> None:
        rv: str | None = None
        delay = self._backoff_min_s
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._relist()
                    self._recovered()
                    delay = self._backoff_min_s
                w = self._watch = _RawWatch()
                started = time.monotonic()
                events = 0
                for ev in w.stream(
                    self._list, self._namespace, label_selector=SELECTOR, resource_version=rv,
                    allow_watch_bookmarks=True, timeout_seconds=self._watch_timeout_s,
                    _request_timeout=(self._connect_timeout_s, self._watch_timeout_s + 5),
                ):
                    if self._stop.is_set():
                        break
                    events += 1
                    kind, obj = ev.get("type"), ev.get("raw_object") or {}
                    new_rv = obj.get("metadata", {}).get("resourceVersion") if isinstance(obj, dict) else None
                    if kind in ("ADDED", "MODIFIED", "DELETED"):
                        self._post(kind, obj)
                    if new_rv:
                        rv = str(new_rv)
                    self._recovered()
                    delay = self._backoff_min_s
                if events == 0 and time.monotonic() - started < 1.0 and not self._stop.is_set():
                    self._stop.wait(self._backoff_min_s)  # a server ending watches at once must not make us spin
            except Exception as e:  # noqa: BLE001 - a watch thread must survive anything and retry
                if self._stop.is_set():
                    break
                if status(e) == 410:
                    log.info("watch expired (410 Gone), re-listing", extra={"watch": self.name, "resource_version": rv})
                    rv = None
                    continue
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                    log.warning(
                        "kubernetes API unreachable; keeping the last known state and retrying",
                        extra={"watch": self.name, "error": reason(e)},
                    )
                else:
                    log.debug("watch retry failed", extra={"watch": self.name, "error": reason(e)})
                rv = None  # re-list once reachable: a fresh, complete state marks the recovery
                self._stop.wait(delay)
                delay = min(delay * 2, self._backoff_max_s)
            finally:
                self._watch = None

    def _recovered(self) -> None:
        if self.failing_since is not None:
            log.warning(
                "kubernetes API reachable again",
                extra={"watch": self.name, "after_s": round(time.monotonic() - self.failing_since, 2)},
            )
            self.failing_since = None
