"""Run each revision as a Kubernetes Deployment; ready endpoints come from EndpointSlices.

One revision = one Deployment (name = revision name) and one headless Service of the same name. The Service
exists only so that Kubernetes' EndpointSlice controller publishes the revision's pod addresses with their
readiness; the controller copies a Service's labels onto its slices (all but the reserved
`kubernetes.io/service-name`, `endpointslice.kubernetes.io/managed-by`, `service.kubernetes.io/headless`),
so one namespace-wide watch on `app.kubernetes.io/managed-by=ferry` sees every revision's slices and the
`ferry.dev/revision` label says whose they are. A second watch on Deployments with the same selector keeps
a cache of spec/status replicas, so an autoscaler tick that changes nothing makes no API request.

Threads: the `kubernetes` client is blocking. One-shot calls run in the default executor
(`asyncio.to_thread`); each watch runs list+watch in its own thread (reflector.py) and hands events to the
loop with `call_soon_threadsafe`. All cache state lives on the loop; threads only read the API.

Failure handling:
- watch 410 Gone / expired resourceVersion: re-list, diff against the cache, report changes, resume watching
  from the list's resourceVersion;
- API errors or an outage: the last endpoints stay (nothing is cleared), the watch retries with exponential
  backoff 0.1 s -> 5 s, logging once when the outage starts and once when it ends; it re-lists (and diffs)
  when the API answers again;
- calls (create/scale/delete) retry transient errors (connection errors, 429, 5xx) with tenacity, the same
  backoff, for at most `api_retry_s`; a 409 Conflict on the scale subresource re-reads the Scale and
  re-applies with its resourceVersion as precondition.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import tenacity
from kubernetes import client as k8s

# The client imports its API classes lazily, ~0.4 s each: on first use that would stall the event loop, at the
# worst moment for a follower becoming leader (its lease renewals run on that loop). Import them now.
from kubernetes.client import AppsV1Api, CoreV1Api, DiscoveryV1Api
from kubernetes.client.exceptions import ApiException

from ...routing.revisions import RevisionStore
from ..base import Durable, DrainHook, Endpoint, EndpointsChanged, InstanceCounts, InstanceInfo, Workload
from .api import conflict, json_call, reason, resource_version, transient
from .history import DIGEST, DeploymentHistory, creation_annotations, read_history
from .manifests import (
    ANNOTATION_OWNER,
    LABEL_REVISION,
    LABEL_SERVICE,
    PORT_NAME,
    SELECTOR,
    SLICE_SERVICE_LABEL,
    KubeWorkload,
    deployment_manifest,
    kube_workload,
    service_manifest,
)
from .reflector import Reflector

log = logging.getLogger("ferry.backends.kubernetes")


@dataclass
class _SliceEntry:
    revision: str
    # (address, port, ready, terminating, pod name)
    addresses: tuple[tuple[str, int, bool, bool, str], ...]


def _parse_slice(obj: Mapping[str, Any]) -> _SliceEntry | None:
    labels = obj.get("metadata", {}).get("labels") or {}
    revision = labels.get(LABEL_REVISION) or labels.get(SLICE_SERVICE_LABEL)
    if not revision:
        return None
    ports = obj.get("ports") or []
    port = next((p.get("port") for p in ports if p.get("name") == PORT_NAME), None)
    if port is None and ports:
        port = ports[0].get("port")
    if port is None:
        return _SliceEntry(revision, ())
    out = []
    for ep in obj.get("endpoints") or []:
        cond = ep.get("conditions") or {}
        ready = cond.get("ready") is not False  # unset means ready (API semantics)
        terminating = cond.get("terminating") is True
        pod = (ep.get("targetRef") or {}).get("name") or ""
        for addr in ep.get("addresses") or []:
            out.append((addr, int(port), ready, terminating, pod))
    return _SliceEntry(revision, tuple(out))


class KubernetesBackend(Durable):
    """The Backend protocol (ferry.backends.base) on Kubernetes Deployments in one namespace; Durable, as
    Deployments outlive ferry.

    `scale()` takes a `KubeWorkload` (or a plain `Workload` when `default_image` is set, converted with
    `kube_workload`). Watches start on the first `scale()` or on `start()`, which is worth awaiting at
    startup: it fills the caches so endpoints of revisions that already run flow at once.
    """

    def __init__(
        self,
        on_endpoints: EndpointsChanged,
        *,
        drain: DrainHook | None = None,
        namespace: str,
        api_client: k8s.ApiClient,
        owner: str = "ferry",
        default_image: str | None = None,
        retain: bool = False,
        watch_timeout_s: int = 300,
        connect_timeout_s: float = 5.0,
        request_timeout_s: float = 30.0,
        api_retry_s: float = 30.0,
        backoff_min_s: float = 0.1,
        backoff_max_s: float = 5.0,
    ) -> None:
        self._on_endpoints = on_endpoints
        self._drain = drain
        self._namespace = namespace
        self._api_client = api_client
        self._apps = AppsV1Api(api_client)
        self._core = CoreV1Api(api_client)
        self._discovery = DiscoveryV1Api(api_client)
        self.owner = owner
        self._default_image = default_image
        self._retain = retain  # stop() leaves the Deployment at 0 replicas; collect_garbage() deletes it later
        self._watch_timeout_s = watch_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._request_timeout = (connect_timeout_s, request_timeout_s)
        self._api_retry_s = api_retry_s
        self._backoff_min_s = backoff_min_s
        self._backoff_max_s = backoff_max_s
        self._reflectors: list[Reflector] = []
        self._deployments: dict[str, dict[str, Any]] = {}  # ours only (owner annotation), by name
        self._written: dict[str, tuple[int, int]] = {}  # revision -> (resourceVersion, replicas) of our last write
        self._slices: dict[str, _SliceEntry] = {}  # by slice name
        self._published: dict[str, tuple[Endpoint, ...]] = {}
        self._stopping: set[str] = set()
        self._workloads: dict[str, KubeWorkload] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._annotations: dict[str, dict[str, str | None]] = {}  # revision -> annotations to write
        self._annotations_queued = asyncio.Event()
        self._annotator: asyncio.Task[None] | None = None
        self._store: RevisionStore | None = None  # set by recover(): revisions to record on creation
        self._closed = False

    # ---- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start both watches and wait for their first list (a no-op when already started)."""
        self._ensure_watching()
        await asyncio.gather(*(r.synced.wait() for r in self._reflectors))

    def _ensure_watching(self) -> None:
        if self._closed:
            raise RuntimeError("backend is closed")
        if not self._reflectors:
            loop = asyncio.get_running_loop()
            common = dict(
                watch_timeout_s=self._watch_timeout_s, connect_timeout_s=self._connect_timeout_s,
                backoff_min_s=self._backoff_min_s, backoff_max_s=self._backoff_max_s,
            )
            self._reflectors = [
                Reflector("deployments", self._apps.list_namespaced_deployment, self._namespace, loop,
                           self._on_deployment_event, **common),
                Reflector("endpointslices", self._discovery.list_namespaced_endpoint_slice, self._namespace, loop,
                           self._on_slice_event, **common),
            ]
            for r in self._reflectors:
                r.start()

    async def aclose(self) -> None:
        """Stop the watches and join their threads. Deployments keep running (see collect_garbage)."""
        if self._annotator is not None:
            await self._flush_annotations(self._connect_timeout_s)
            self._annotator.cancel()
            await asyncio.gather(self._annotator, return_exceptions=True)
        self._closed = True
        for r in self._reflectors:
            r.stop()
        for r in self._reflectors:
            if not await asyncio.to_thread(r.join, self._connect_timeout_s + 5):
                log.warning("watch thread did not exit", extra={"watch": r.name})

    # ---- Backend protocol ---------------------------------------------------------------------------

    async def scale(self, workload: KubeWorkload | Workload, instances: int) -> None:
        """Converge the revision's Deployment to `instances` replicas; no API request when already there.

        The first call creates the Service and the Deployment (at `instances`, 0 included: the Deployment
        records the revision, see history.py). Later calls patch the scale subresource only when the cached spec.replicas
        (from ferry's own last write or the Deployment watch, whichever is newer) differs.
        """
        if self._closed:
            raise RuntimeError("backend is closed")
        if instances < 0:
            raise ValueError(f"instances must be >= 0, got {instances}")
        wl = self._as_kube(workload)
        self._ensure_watching()
        self._workloads[wl.revision] = wl
        self._stopping.discard(wl.revision)
        if self._known_replicas(wl.revision) == instances:
            return
        async with self._lock(wl.revision):
            current = self._known_replicas(wl.revision)
            if current == instances:
                return
            if current is not None:
                try:
                    await self._set_scale(wl.revision, instances)
                    return
                except ApiException as e:
                    if e.status != 404:
                        raise
                    # deleted behind our back (the watch will say so too): create it again
                    self._deployments.pop(wl.revision, None)
                    self._written.pop(wl.revision, None)
            await self._create(wl, instances)  # even at 0: the Deployment carries the revision's history

    def endpoints(self, revision: str) -> tuple[Endpoint, ...]:
        return self._published.get(revision, ())

    def counts(self, revision: str) -> InstanceCounts:
        """ready = published endpoints; total = desired replicas (spec); started is not tracked (0)."""
        return InstanceCounts(ready=len(self._published.get(revision, ())), total=self._known_replicas(revision) or 0)

    def instances(self, revision: str) -> tuple[InstanceInfo, ...]:
        """One entry per pod address in the revision's EndpointSlices (not-ready and terminating included).

        log_path is not a file: it names the pod (`kubectl logs` reads it).
        """
        out = []
        stopping = revision in self._stopping
        seen: set[tuple[str, int]] = set()
        for entry in self._slices.values():
            if entry.revision != revision:
                continue
            for addr, port, ready, terminating, pod in entry.addresses:
                if (addr, port) in seen:
                    continue
                seen.add((addr, port))
                out.append((addr, port, ready, terminating, pod))
        out.sort()
        return tuple(
            InstanceInfo(
                index=i,
                pid=None,
                endpoint=Endpoint(addr, port),
                ready=ready and not terminating and not stopping,
                stopping=terminating or stopping,
                restarts=0,
                log_path=Path(f"pods/{self._namespace}/{pod or addr}"),
            )
            for i, (addr, port, ready, terminating, pod) in enumerate(out, start=1)
        )

    async def stop(self, revision: str) -> None:
        """Leave EDS first, drain every endpoint that was published, then scale to 0 and delete (with `retain`:
        keep the Deployment at 0, so the revision comes back with one scale call until garbage collection)."""
        self._stopping.add(revision)
        previous = self._published.get(revision, ())
        self._publish(revision)  # -> () while stopping
        wl = self._workloads.get(revision)
        timeout = wl.timeout_s if wl else 300.0
        if self._drain is not None and previous:
            await asyncio.gather(*(self._drain_one(revision, ep, timeout) for ep in previous))
        async with self._lock(revision):
            if self._known_replicas(revision) not in (None, 0):
                try:
                    await self._set_scale(revision, 0)
                except ApiException as e:
                    if e.status != 404:
                        raise
            if self._retain:
                return
            await self._delete("deployment", revision)
            await self._delete("service", revision)
            self._written.pop(revision, None)
            self._deployments.pop(revision, None)
            self._workloads.pop(revision, None)

    async def recover(self, store: RevisionStore) -> int:
        """Take in the revision history recorded on the Deployments (another replica's, or this one's before an
        emptyDir was lost), then record every later write of `store` there too. Returns revisions added."""
        await self.start()
        added = store.import_history(
            read_history(self._deployments.values(), service_label=LABEL_SERVICE, revision_label=LABEL_REVISION))
        store.observer = DeploymentHistory(store, self.annotate)
        self._store = store
        return added

    def replicas(self, revision: str) -> int | None:
        """The revision's desired replicas (None: no Deployment): a new leader keeps what the last one set."""
        return self._known_replicas(revision)

    def annotate(self, revision: str, annotations: Mapping[str, str | None]) -> None:
        """Set (None: remove) annotations of the revision's Deployment, in the background: queued writes to one
        Deployment merge into one patch, failures are retried, and aclose() flushes what is left."""
        self._annotations.setdefault(revision, {}).update(annotations)
        self._annotations_queued.set()
        if self._annotator is None and not self._closed:
            self._annotator = asyncio.get_running_loop().create_task(self._write_annotations(), name="annotate")

    async def _write_annotations(self) -> None:
        while True:
            await self._annotations_queued.wait()
            self._annotations_queued.clear()
            while self._annotations:
                revision, notes = next(iter(self._annotations.items()))
                del self._annotations[revision]
                try:
                    await self._call(self._apps.patch_namespaced_deployment, revision, self._namespace,
                                     {"metadata": {"annotations": notes}})
                except ApiException as e:
                    if e.status == 404:
                        continue  # deleted (garbage collected): nothing left to record on
                    self._requeue_annotations(revision, notes, e)
                except Exception as e:  # noqa: BLE001 - the API is away: keep the facts, try again later
                    self._requeue_annotations(revision, notes, e)
                    await asyncio.sleep(self._backoff_max_s)

    def _requeue_annotations(self, revision: str, notes: dict[str, str | None], err: BaseException) -> None:
        log.warning("cannot record revision history; will retry", extra={"revision": revision, "error": reason(err)})
        self._annotations[revision] = {**notes, **self._annotations.get(revision, {})}
        self._annotations_queued.set()

    async def _flush_annotations(self, timeout: float) -> None:
        """Give queued history writes a moment to land (shutdown: the next leader reads them)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._annotations and self._annotator is not None and not self._annotator.done():
            if asyncio.get_running_loop().time() >= deadline:
                log.warning("revision history not fully recorded", extra={"revisions": len(self._annotations)})
                return
            await asyncio.sleep(0.02)

    async def collect_garbage(self, keep: set[str]) -> list[str]:
        """Delete the Deployments and Services labelled managed-by ferry, carrying our owner annotation, whose
        revision is not in `keep`. Returns "kind/name" of what was deleted."""
        deleted: list[str] = []
        deps = await self._call(self._apps.list_namespaced_deployment, self._namespace, label_selector=SELECTOR)
        svcs = await self._call(self._core.list_namespaced_service, self._namespace, label_selector=SELECTOR)
        for kind, items in (("deployment", deps.get("items") or []), ("service", svcs.get("items") or [])):
            for obj in items:
                meta = obj.get("metadata") or {}
                name = meta.get("name")
                if not name or (meta.get("annotations") or {}).get(ANNOTATION_OWNER) != self.owner:
                    continue
                revision = (meta.get("labels") or {}).get(LABEL_REVISION, name)
                if revision in keep:
                    continue
                if kind == "deployment" and self._published.get(revision):
                    self._stopping.add(revision)
                    self._publish(revision)
                await self._delete(kind, name)
                deleted.append(f"{kind}/{name}")
        return deleted

    # ---- API calls ----------------------------------------------------------------------------------

    def _retrying(self, retry: Callable[[BaseException], bool]) -> tenacity.AsyncRetrying:
        return tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(retry),
            wait=tenacity.wait_exponential(multiplier=self._backoff_min_s, min=self._backoff_min_s,
                                           max=self._backoff_max_s),
            stop=tenacity.stop_after_delay(self._api_retry_s),
            reraise=True,
            before_sleep=lambda rs: log.info(
                "kubernetes API call failed, retrying",
                extra={"error": reason(rs.outcome.exception()), "attempt": rs.attempt_number},
            ),
        )

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """A blocking client call in a worker thread, transient errors retried with backoff; the answer as JSON.

        Raw JSON, not the client's models: ferry reads a few fields, and the models' strict validation would
        turn a field they do not know into a failure.
        """
        kwargs.setdefault("_request_timeout", self._request_timeout)
        kwargs["_preload_content"] = False
        async for attempt in self._retrying(transient):
            with attempt:
                return await asyncio.to_thread(json_call, fn, *args, **kwargs)
        raise AssertionError("unreachable")

    async def _create(self, wl: KubeWorkload, replicas: int) -> None:
        revision = self._store.get(wl.revision) if self._store is not None else None
        if revision is not None:
            wl = replace(wl, annotations={**creation_annotations(revision), **wl.annotations})
        try:
            await self._call(self._core.create_namespaced_service, self._namespace,
                             service_manifest(wl, owner=self.owner))
        except ApiException as e:
            if e.status != 409:
                raise
        try:
            created = await self._call(self._apps.create_namespaced_deployment, self._namespace,
                                       deployment_manifest(wl, owner=self.owner, replicas=replicas))
        except ApiException as e:
            if e.status != 409:
                raise
            # AlreadyExists (a previous ferry, or a create whose answer was lost): adopt it if it is ours.
            existing = await self._call(self._apps.read_namespaced_deployment, wl.revision, self._namespace)
            notes = existing.get("metadata", {}).get("annotations") or {}
            owner = notes.get(ANNOTATION_OWNER)
            if owner != self.owner:
                raise RuntimeError(f"deployment {wl.revision} exists and is not owned by {self.owner!r} "
                                   f"(owner: {owner!r})") from e
            ours, theirs = wl.annotations.get(DIGEST), notes.get(DIGEST)
            if ours and theirs and ours != theirs:
                # Same name, other template: a history that diverged (a replica that could not read the
                # shared one). Running the old pods under the new revision's name would serve other code.
                raise RuntimeError(
                    f"deployment {wl.revision} exists with a different template (digest {theirs[:12]}, this "
                    f"revision's is {ours[:12]}): delete it, or restore the state ferry's history came from") from e
            existing_replicas = existing.get("spec", {}).get("replicas", 1)
            self._note_write(wl.revision, existing["metadata"].get("resourceVersion"), existing_replicas)
            if existing_replicas != replicas:
                await self._set_scale(wl.revision, replicas)
            return
        self._note_write(wl.revision, created["metadata"].get("resourceVersion"), replicas)
        log.info("deployment created", extra={"revision": wl.revision, "replicas": replicas})

    async def _set_scale(self, revision: str, replicas: int) -> None:
        """Patch deployments/scale; on 409 Conflict re-read the Scale and re-apply on its resourceVersion."""
        scale = await self._callconflict_safe(revision, replicas)
        self._note_write(revision, scale.get("metadata", {}).get("resourceVersion"), replicas)
        log.info("deployment scaled", extra={"revision": revision, "replicas": replicas})

    async def _callconflict_safe(self, revision: str, replicas: int) -> Any:
        first = True
        async for attempt in self._retrying(conflict):
            with attempt:
                if first:
                    first = False
                    return await self._call(self._apps.patch_namespaced_deployment_scale, revision, self._namespace,
                                            {"spec": {"replicas": replicas}})
                current = await self._call(self._apps.read_namespaced_deployment_scale, revision, self._namespace)
                current_rv = current.get("metadata", {}).get("resourceVersion")
                log.info("scale conflict, re-applying",
                         extra={"revision": revision, "replicas": replicas, "resource_version": current_rv})
                body = {"apiVersion": "autoscaling/v1", "kind": "Scale",
                        "metadata": {"name": revision, "namespace": self._namespace, "resourceVersion": current_rv},
                        "spec": {"replicas": replicas}}
                return await self._call(self._apps.replace_namespaced_deployment_scale, revision, self._namespace,
                                        body)
        raise AssertionError("unreachable")

    async def _delete(self, kind: str, name: str) -> None:
        fn = self._apps.delete_namespaced_deployment if kind == "deployment" else self._core.delete_namespaced_service
        try:
            await self._call(fn, name, self._namespace, propagation_policy="Background")
        except ApiException as e:
            if e.status != 404:
                raise
            return
        log.info("deleted", extra={"kind": kind, "name": name})

    # ---- caches (on the loop) -----------------------------------------------------------------------

    def _as_kube(self, workload: KubeWorkload | Workload) -> KubeWorkload:
        if isinstance(workload, KubeWorkload):
            return workload
        image = workload.image or self._default_image
        if image is None:
            raise TypeError(f"revision {workload.revision}: a Kubernetes workload needs an image")
        return kube_workload(
            workload, image=image, port=workload.port or 8080, args=workload.args, resources=workload.resources
        )

    def _lock(self, revision: str) -> asyncio.Lock:
        lock = self._locks.get(revision)
        if lock is None:
            lock = self._locks[revision] = asyncio.Lock()
        return lock

    def _note_write(self, revision: str, resource_version: str | None, replicas: int) -> None:
        try:
            rv = int(resource_version or 0)
        except ValueError:
            rv = 0
        self._written[revision] = (rv, replicas)

    def _known_replicas(self, revision: str) -> int | None:
        """spec.replicas as last seen: our own last write or the watch, whichever is newer; None = no Deployment."""
        dep = self._deployments.get(revision)
        written = self._written.get(revision)
        if dep is None:
            return written[1] if written else None
        if written and written[0] > resource_version(dep):
            return written[1]
        replicas = dep.get("spec", {}).get("replicas")
        return 1 if replicas is None else int(replicas)

    def _ours(self, obj: Mapping[str, Any]) -> bool:
        return (obj.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_OWNER) == self.owner

    def _on_deployment_event(self, kind: str, payload: Any) -> None:
        if kind == "SYNC":
            items, list_rv = payload
            self._deployments = {o["metadata"]["name"]: o for o in items if self._ours(o)}
            for name, (written_rv, _) in list(self._written.items()):
                if name not in self._deployments and written_rv <= list_rv:
                    self._written.pop(name, None)  # deleted behind our back since our last write
            return
        name = payload.get("metadata", {}).get("name")
        if not name or not self._ours(payload):
            return
        if kind == "DELETED":
            self._deployments.pop(name, None)
            written = self._written.get(name)
            if written is not None and written[0] <= resource_version(payload):
                self._written.pop(name, None)
        else:
            self._deployments[name] = payload

    def _on_slice_event(self, kind: str, payload: Any) -> None:
        touched: set[str] = set()
        if kind == "SYNC":
            touched.update(e.revision for e in self._slices.values())
            self._slices = {}
            for obj in payload[0]:
                entry = _parse_slice(obj)
                if entry is not None:
                    self._slices[obj["metadata"]["name"]] = entry
                    touched.add(entry.revision)
            touched.update(self._published)
        else:
            name = payload.get("metadata", {}).get("name")
            old = self._slices.pop(name, None)
            if old is not None:
                touched.add(old.revision)
            if kind != "DELETED":
                entry = _parse_slice(payload)
                if entry is not None:
                    self._slices[name] = entry
                    touched.add(entry.revision)
        for revision in sorted(touched):
            self._publish(revision)

    def _ready_endpoints(self, revision: str) -> tuple[Endpoint, ...]:
        if revision in self._stopping:
            return ()
        eps = {
            Endpoint(addr, port)
            for entry in self._slices.values() if entry.revision == revision
            for addr, port, ready, terminating, _ in entry.addresses if ready and not terminating
        }
        return tuple(sorted(eps))

    def _publish(self, revision: str) -> None:
        eps = self._ready_endpoints(revision)
        if eps == self._published.get(revision, ()):
            return
        if eps:
            self._published[revision] = eps
        else:
            self._published.pop(revision, None)
        try:
            self._on_endpoints(revision, eps)
        except Exception:
            log.exception("on_endpoints callback failed: revision=%s", revision)

    async def _drain_one(self, revision: str, ep: Endpoint, timeout: float) -> None:
        assert self._drain is not None
        try:
            async with asyncio.timeout(timeout):
                await self._drain(revision, ep)
        except TimeoutError:
            log.warning("drain timed out", extra={"revision": revision, "endpoint": str(ep), "after_s": timeout})
        except Exception:
            log.exception("drain hook failed", extra={"revision": revision, "endpoint": str(ep)})
