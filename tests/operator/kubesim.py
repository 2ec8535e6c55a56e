"""A Kubernetes API server for tests: kmock's KubernetesEmulator on a real port, in a thread.

kmock serves the Kubernetes REST API (discovery, list, watch, get, create, merge/JSON patch,
delete with finalizers) from memory over real HTTP, so the operator runs unmodified: kopf and the
``kubernetes`` client connect to it through an ordinary kubeconfig. What kmock leaves out, and
this module adds (kmock's docs invite subclassing for "special" fields):

* watches that start after ``?resourceVersion=`` (kmock replays every object as ADDED, so a
  LIST-then-WATCH client such as kopf would see each object twice, the second time stale);
* server-managed metadata: ``metadata.generateName``, ``uid``, ``creationTimestamp`` (whole seconds,
  as a real server stores it), ``generation`` (bumped on spec
  changes) and ``resourceVersion`` (bumped on every write, so kopf's JSON-patch ``test`` of the
  resourceVersion, which guards its finalizer changes, behaves as on a real server);
* a failed JSON-patch ``test`` answers 422, as a real server does (kmock: 500), so kopf
  re-reads the object instead of retrying the stale patch;
* a PUT or merge patch carrying a stale ``metadata.resourceVersion`` answers 409 (optimistic
  concurrency);
* ``pods/{name}/log``: served from :attr:`Cluster.logs` (kmock would return the pod object).

What nothing here does (the tests play these parts through the API, as the real controllers
would): the Job controller (pods, Job status), the scheduler and kubelet (pod phases, container
states, termination messages), the garbage collector (ownerReferences), label-selector filtering
of lists and watches (the operator filters again on its side), and RBAC (every request is
recorded; ``permissions`` checks them afterwards instead).

The test thread talks to it with blocking helpers (``create``, ``get``, ``patch``, ``delete``,
``list``) over HTTP, while kopf runs in its own thread (``kopf.testing.KopfRunner``).
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import json
import logging
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
import warnings
from pathlib import Path
from typing import Any, AsyncIterator, Callable, NamedTuple

import jsonpatch
import kmock
from kmock._internal import aiobus, enums  # the event bus; the request's parsed action
from kmock._internal.k8s import KubernetesError

RESOURCES: dict[str, dict[str, Any]] = {
    "lipsync.dev/v1alpha1/lipsyncjobs": dict(
        kind="LipSyncJob", singular="lipsyncjob", shortnames={"lsj"}, namespaced=True,
        subresources={"status"}, verbs={"get", "list", "watch", "create", "patch", "update", "delete"}),
    "batch/v1/jobs": dict(
        kind="Job", singular="job", namespaced=True, subresources={"status"},
        verbs={"get", "list", "watch", "create", "patch", "update", "delete"}),
    "v1/pods": dict(
        kind="Pod", singular="pod", namespaced=True, subresources={"status", "log"},
        verbs={"get", "list", "watch", "create", "patch", "update", "delete"}),
    "v1/events": dict(
        kind="Event", singular="event", namespaced=True,
        verbs={"get", "list", "watch", "create", "patch", "update", "delete"}),
}

TEST_AGENT = "kubesim-test"  # the tests' own requests, told apart from the operator's
LOG_PATH = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<pod>[^/]+)/log$")


def now_iso(seconds: bool = False) -> str:
    spec = "seconds" if seconds else "microseconds"
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec=spec).replace("+00:00", "Z")


class Served(NamedTuple):
    method: str
    path: str
    params: dict[str, str]
    agent: str
    data: Any


class _RecordingBus(aiobus.Bus):
    """kmock's per-resource event bus, also appending each event to the server's event log."""

    def __init__(self, server: "ApiServer", resource: Any) -> None:
        super().__init__()
        object.__setattr__(self, "_server", server)
        object.__setattr__(self, "_resource", resource)

    async def put(self, *items: Any) -> None:
        server = self._server
        for item in items:
            server.events.append((server.last_rv, self._resource, item))
        async with server.events_changed:
            server.events_changed.notify_all()
        await super().put(*items)


class _Buses(dict):
    def __init__(self, server: "ApiServer") -> None:
        super().__init__()
        self.server = server

    def __missing__(self, resource: Any) -> _RecordingBus:
        bus = self[resource] = _RecordingBus(self.server, resource)
        return bus


class ApiServer(kmock.KubernetesEmulator):
    """kmock's emulator plus what a real API server does with metadata and watches."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.last_rv = 0
        self.events: list[tuple[int, Any, dict[str, Any]]] = []  # (resourceVersion, resource, event)
        self.events_changed = asyncio.Condition()
        self._write_lock = asyncio.Lock()
        self._buses = _Buses(self)
        self.log: list[Served] = []
        self._inflight: set[Any] = set()
        self.refusals: dict[tuple[str, str], list[KubernetesError]] = collections.defaultdict(list)

    async def _handle(self, request: Any) -> Any:
        # kmock matches each request against its reactions by scanning every request it ever
        # served (O(n) per request): keep only those still in flight there, and our own log here.
        method = str(request.method.value if hasattr(request.method, "value") else request.method).upper()
        self.log.append(Served(method, request.url.path, dict(request.params),
                               request.headers.get("User-Agent", ""), request.data))
        self._inflight.add(request)
        self._requests[:] = [r for r in self._requests if r in self._inflight]
        refusals = self.refusals.get((method, request.url.path))
        if refusals:  # an error the test asked for, before anything is stored
            self._inflight.discard(request)
            raise refusals.pop(0)
        try:
            writes = request.resource is not None and request.action in (
                enums.action.CREATE, enums.action.UPDATE, enums.action.DELETE)
            if not writes:
                return await super()._handle(request)
            # One write at a time, so resourceVersions, stored versions and watch events share one order.
            async with self._write_lock:
                if method in ("PUT", "PATCH"):
                    self._check_precondition(request)
                self.last_rv += 1
                self._stamp(request, str(self.last_rv))
                try:
                    return await super()._handle(request)
                except jsonpatch.JsonPatchTestFailed as e:
                    # A failed JSON-patch "test" (kopf's resourceVersion guard) is a 422 on a real server.
                    raise KubernetesError(status=422, reason="Invalid", message=f"test operation failed: {e}") from None
        finally:
            self._inflight.discard(request)

    def _check_precondition(self, request: Any) -> None:
        """A PUT or merge patch naming a ``metadata.resourceVersion`` that is not the stored one: 409,
        as on a real server (optimistic concurrency; kmock writes regardless). Leader election relies
        on it."""
        given = ((request.data or {}).get("metadata") or {}).get("resourceVersion") if isinstance(request.data, dict) else None
        key = (request.resource, request.namespace, request.name)
        if given and key in self.objects and not self.objects[key].deleted:
            stored = str(self.objects[key].get("metadata", {}).get("resourceVersion"))
            if stored != str(given):
                raise KubernetesError(status=409, reason="Conflict", message=(
                    f"Operation cannot be fulfilled on {request.name}: the object has been modified; "
                    "please apply your changes to the latest version and try again"))

    def _stamp(self, request: Any, rv: str) -> None:
        data = request.data
        if request.action == enums.action.CREATE and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):  # kopf's Events use generateName
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now_iso(seconds=True))  # a real server keeps whole seconds
            meta.setdefault("generation", 1)
            if request.namespace and not meta.get("namespace"):
                meta["namespace"] = request.namespace
            meta["resourceVersion"] = rv
        elif request.action == enums.action.UPDATE and isinstance(data, dict):
            meta = data.get("metadata")
            if not isinstance(meta, dict):
                meta = data["metadata"] = {}
            meta["resourceVersion"] = rv
            if "spec" in data and not request.subresource:
                key = (request.resource, request.namespace, request.name)
                if key in self.objects and not self.objects[key].deleted:
                    meta["generation"] = int(self.objects[key].get("metadata", {}).get("generation", 1)) + 1
        elif request.action == enums.action.UPDATE and isinstance(data, list):
            data.append({"op": "add", "path": "/metadata/resourceVersion", "value": rv})

    # kmock finds an object by scanning all objects (O(n) per request, O(n^2) for a benchmark of
    # hundreds); a real server looks it up by key. Same answers, by key.
    def _one(self, request: Any, namespace: str | None = None, name: str | None = None) -> Any:
        key = (request.resource, namespace or request.namespace, name or request.name)
        if key not in self.objects or self.objects[key].deleted:
            raise KubernetesError(status=404, reason="NotFound", message=f"{key[2]!r} not found")
        return self.objects[key]

    async def _serve_fetch(self, request: Any) -> Any:
        return self._one(request).raw

    async def _serve_create(self, request: Any) -> Any:
        meta = request.data.get("metadata", {})
        return self._one(request, meta.get("namespace"), meta.get("name")).raw

    async def _serve_update(self, request: Any) -> Any:
        return self._one_any(request).last.raw

    async def _serve_delete(self, request: Any) -> Any:
        return self._one_any(request).last.raw

    def _one_any(self, request: Any) -> Any:  # just updated or just deleted: the last version
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects:
            raise KubernetesError(status=404, reason="NotFound", message=f"{key[2]!r} not found")
        return self.objects[key]

    async def _serve_list(self, request: Any) -> Any:
        rv = self.last_rv  # before listing: a write racing the list is re-sent by the watch (harmless)
        result = await super()._serve_list(request)
        result["metadata"] = {"resourceVersion": str(rv)}
        return result

    async def _serve_watch(self, request: Any) -> AsyncIterator[Any]:
        """Events after ``?resourceVersion=`` (kmock: all objects again, then live events)."""
        since = request.params.get("resourceVersion", "")
        if not since.isdigit() or since == "0":
            async for item in super()._serve_watch(request):
                yield item
            return
        yield b""  # send the headers now
        pos = next((i for i, (rv, _, _) in enumerate(self.events) if rv > int(since)), len(self.events))
        while True:
            while pos < len(self.events):
                _, resource, event = self.events[pos]
                pos += 1
                meta = (event.get("object") or {}).get("metadata") or {}
                if resource == request.resource and request.namespace in (None, meta.get("namespace")):
                    yield event
            async with self.events_changed:
                if pos >= len(self.events):
                    await self.events_changed.wait()


class Cluster:
    """The emulated API server, running in a background thread; blocking helpers for tests."""

    def __init__(self) -> None:
        self.logs: dict[tuple[str, str], str] = {}
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kmock", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error:
            raise RuntimeError(f"kmock did not start: {self._error!r}")

    # ------------------------------------------------------------------ server thread
    def _run(self) -> None:
        logging.getLogger("aiohttp.access").disabled = True  # the server's access log is noise here
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as e:  # pragma: no cover - surfaced by __init__
            self._error = e
            self._ready.set()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with ApiServer() as api, kmock.Server(api) as server:
            with warnings.catch_warnings():  # kmock's importlib.resources.read_binary
                warnings.simplefilter("ignore", DeprecationWarning)
                api.resources.load_bundled()  # the built-in API groups, as a real server lists them
            for res, info in RESOURCES.items():
                api.resources[res] = info
            api["get", re.compile(LOG_PATH.pattern)] << self._serve_log
            self.api = api
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def _serve_log(self, request: Any) -> bytes:
        m = LOG_PATH.match(request.url.path)
        text = self.logs.get((m["ns"], m["pod"]), "") if m else ""
        tail = request.params.get("tailLines")
        lines = text.splitlines(keepends=True)
        if tail:
            lines = lines[-int(tail):]
        return "".join(lines).encode()

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def in_loop(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` in the server's thread (for reading kmock's state consistently)."""
        async def call() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(10)

    # ------------------------------------------------------------------ kubeconfig
    def kubeconfig(self, path: Path) -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": "kmock", "user": {"token": "test-token"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
        }))
        return path

    # ------------------------------------------------------------------ REST helpers
    def call(self, method: str, path: str, body: Any = None, *,
             content_type: str = "application/json") -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": content_type, "Accept": "application/json",
                                              "User-Agent": TEST_AGENT})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, raw.decode()

    @staticmethod
    def path(resource: str, namespace: str | None = None, name: str | None = None,
             sub: str | None = None) -> str:
        group_version, plural = resource.rsplit("/", 1)
        base = f"/api/{group_version}" if group_version == "v1" else f"/apis/{group_version}"
        p = base + (f"/namespaces/{namespace}" if namespace else "") + f"/{plural}"
        return p + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")

    def create(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        ns = obj["metadata"].get("namespace")
        code, data = self.call("POST", self.path(resource, ns), obj)
        assert code in (200, 201), (code, data)
        return data

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        code, data = self.call("GET", self.path(resource, namespace, name))
        return data if code == 200 else None

    def list(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        code, data = self.call("GET", self.path(resource, namespace))
        assert code == 200, (code, data)
        return list(data.get("items") or [])

    def patch(self, resource: str, namespace: str, name: str, patch: dict[str, Any],
              sub: str | None = None) -> dict[str, Any]:
        code, data = self.call("PATCH", self.path(resource, namespace, name, sub), patch,
                               content_type="application/merge-patch+json")
        assert code == 200, (code, data)
        return data

    def delete(self, resource: str, namespace: str, name: str) -> int:
        code, _ = self.call("DELETE", self.path(resource, namespace, name))
        return code

    # ------------------------------------------------------------------ recorded traffic
    def requests(self, *, tests: bool = False) -> list[tuple[str, str, dict[str, str]]]:
        """(method, path, query) of every request served so far (the operator's; with ``tests``, all)."""
        return self.in_loop(lambda: [(r.method, r.path, r.params) for r in self.api.log
                                     if tests or r.agent != TEST_AGENT])

    def refuse(self, method: str, path: str, *, status: int, message: str, times: int = 1) -> None:
        """Answer the next ``times`` such requests with an error (e.g. a ResourceQuota's 403)."""
        err = KubernetesError(status=status, reason="Forbidden" if status == 403 else "Error", message=message)
        self.in_loop(lambda: self.api.refusals[method.upper(), path].extend([err] * times))

    def bodies(self, method: str, path: str) -> list[Any]:
        """The parsed bodies of the operator's requests with this method and path."""
        return self.in_loop(lambda: [r.data for r in self.api.log
                                     if r.method == method and r.path == path and r.agent != TEST_AGENT])

    def history(self, resource: str, namespace: str, name: str) -> list[dict[str, Any] | None]:
        """Every stored version of an object, oldest first (None: deleted)."""
        def read() -> list[dict[str, Any] | None]:
            key = (kmock.resource(resource), namespace, name)
            if key not in self.api.objects:
                return []
            return [None if v is None else json.loads(json.dumps(v.raw))
                    for v in self.api.objects[key].history]
        return self.in_loop(read)

    def phases(self, namespace: str, name: str) -> list[str]:
        """The LipSyncJob's status.phase over its history, consecutive repeats folded."""
        out: list[str] = []
        for v in self.history(CRS, namespace, name):
            phase = ((v or {}).get("status") or {}).get("phase")
            if phase and (not out or out[-1] != phase):
                out.append(phase)
        return out

    def wait(self, what: Callable[[], Any], timeout: float = 15, every: float = 0.05,
             message: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = what()
            if last:
                return last
            time.sleep(every)
        raise AssertionError(f"timed out after {timeout}s waiting for {message}; last: {last!r}")


def namespace_of(path: str) -> str | None:
    """The namespace a request's path names, None for a cluster-wide one."""
    parts = path.strip("/").split("/")
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    return rest[1] if len(rest) >= 3 and rest[0] == "namespaces" else None


def rbac_of(method: str, path: str, query: dict[str, str]) -> tuple[str, str, str] | None:
    """The (apiGroup, resource, verb) an HTTP request needs under RBAC; None for discovery."""
    parts = path.strip("/").split("/")
    if parts[0] == "api" and len(parts) >= 3:
        group, rest = "", parts[2:]
    elif parts[0] == "apis" and len(parts) >= 4:
        group, rest = parts[1], parts[3:]
    else:
        return None  # /, /version, /api, /apis, /apis/{group}, /apis/{group}/{version}: discovery
    if rest and rest[0] == "namespaces" and len(rest) >= 3:
        rest = rest[2:]
    elif rest and rest[0] == "namespaces":
        rest = rest  # the namespaces resource itself
    resource, name, sub = rest[0], (rest[1] if len(rest) > 1 else None), (rest[2] if len(rest) > 2 else None)
    if sub:
        resource = f"{resource}/{sub}"
    method = method.upper()
    if method == "GET":
        verb = "watch" if query.get("watch") in ("true", "1") else ("get" if name else "list")
    else:
        verb = {"POST": "create", "PATCH": "patch", "PUT": "update",
                "DELETE": "delete" if name else "deletecollection"}.get(method, method.lower())
    return group, resource, verb


# ---------------------------------------------------------------------------- test data
NS = "renders"

# (apiGroup, resource, verb) of every request the operator made in this session's e2e tests
# (filled by conftest's ``cluster`` fixture); test_permissions checks that each rule was needed.
OBSERVED: set[tuple[str, str, str]] = set()


def lipsyncjob(name: str, *, model: dict | None = None, namespace: str = NS, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "lipsync.dev/v1alpha1",
        "kind": "LipSyncJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "video": "s3://media/in/face.mp4",
            "audio": "s3://media/in/speech.wav",
            "model": model or {"name": "wav2lip", "weights": "s3://models/wav2lip_gan.pth"},
            "output": {"uri": f"s3://media/out/{name}"},
            **spec,
        },
    }


# ---------------------------------------------------------------------------- the Job controller's part
JOBS = "batch/v1/jobs"
PODS = "v1/pods"
CRS = "lipsync.dev/v1alpha1/lipsyncjobs"


def start_pod(cluster: Cluster, job: dict[str, Any], attempt: int = 1) -> dict[str, Any]:
    """What the Job controller and kubelet do: a pod from the Job's template, running."""
    meta = job["metadata"]
    name = f"{meta['name']}-{attempt}"
    labels = dict(job["spec"]["template"]["metadata"]["labels"])
    labels["batch.kubernetes.io/job-name"] = meta["name"]
    pod = cluster.create(PODS, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": meta["namespace"], "labels": labels},
        "spec": job["spec"]["template"]["spec"],
        "status": {"phase": "Running", "containerStatuses": [
            {"name": "runner", "ready": True, "state": {"running": {"startedAt": now_iso()}}}]},
    })
    cluster.patch(JOBS, meta["namespace"], meta["name"], {"status": {
        "active": 1, "ready": 1, "startTime": meta.get("creationTimestamp")}}, sub="status")
    return pod


def end_pod(cluster: Cluster, pod: dict[str, Any], *, exit_code: int, message: str = "",
            disrupted: bool = False, reason: str | None = None) -> None:
    """The kubelet's part: the runner container terminated (or the pod was evicted)."""
    meta = pod["metadata"]
    status: dict[str, Any] = {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "containerStatuses": [{"name": "runner", "ready": False, "state": {"terminated": {
            "exitCode": exit_code, "reason": reason or ("Completed" if exit_code == 0 else "Error"),
            "message": message, "finishedAt": now_iso()}}}],
    }
    if disrupted:
        status["reason"] = "Evicted"
        status["conditions"] = [{"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
                                 "message": "Eviction API: evicting"}]
    cluster.patch(PODS, meta["namespace"], meta["name"], {"status": status}, sub="status")


def finish_job(cluster: Cluster, job: dict[str, Any], *, ok: bool, reason: str = "",
               message: str = "", succeeded: int = 0, failed: int = 0) -> None:
    """The Job controller's part: the Job's final condition."""
    meta = job["metadata"]
    t = now_iso()
    cond = ({"type": "Complete", "status": "True", "lastTransitionTime": t} if ok else
            {"type": "Failed", "status": "True", "reason": reason, "message": message, "lastTransitionTime": t})
    status = {"active": 0, "ready": 0, "succeeded": succeeded or (1 if ok else 0), "failed": failed,
              "conditions": [cond]}
    if ok:
        status["completionTime"] = t
    cluster.patch(JOBS, meta["namespace"], meta["name"], {"status": status}, sub="status")
