"""The operator's actions: the I/O around the pure functions of ``jobs``, ``status``, ``queue``.

``handlers`` (kopf) calls these methods and nothing else; these methods call the API server only
through :class:`~lipsync_operator.kube.Kube`, and kopf only for Events.

Status writing: the operator is the only writer of ``.status``. Each LipSyncJob's last written
status is cached here, and every write is computed from it under a per-object lock and sent as a
JSON merge patch of the changed keys through the status subresource. So the Job watcher, the
progress poller and the dispatcher cannot overwrite each other's newer facts, and a write that
changes nothing costs no API call.

Progress: while a LipSyncJob is Running, a kopf daemon polls every ``LIPSYNC_PROGRESS_INTERVAL``
seconds (default 5): it lists the Job's pods, tails the running pod's log (``tailLines=200``) and
takes the last ``{"event": "progress", ...}`` line. Polling the log was chosen over the runner
patching its own status (the runner never talks to Kubernetes and needs no RBAC), over pod
annotations (same) and over the termination message (only written at the end). The runner prints
at most one progress line every 2 s; 200 lines leave room for its other log lines in between
(when none is found, the last known progress stays).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from typing import Any, Callable, Mapping

import kopf

from lipsync import policy
from lipsync.errors import LipSyncError
from lipsync.spec import API_VERSION, KIND, LipSyncJob, parse_job

from . import jobs as jobs_mod
from . import queue, status
from .kube import Kube, KubeError
from .metrics import Metrics, seconds_between
from .settings import Settings

log = logging.getLogger("lipsync_operator")
Key = queue.Key


def check(body: Mapping[str, Any], settings: Settings | None = None) -> tuple[LipSyncJob | None, LipSyncError | None]:
    """Parse a LipSyncJob custom resource with the one schema, then (given ``settings``) apply the
    cluster policy (``lipsync.policy``); (job, None), or (None, the InvalidSpec/NotAllowed error)."""
    meta = body.get("metadata") or {}
    doc = {
        "apiVersion": body.get("apiVersion", API_VERSION),
        "kind": body.get("kind", KIND),
        "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid") if meta.get(k) is not None},
        "spec": body.get("spec"),
    }
    try:
        job = parse_job(doc, source=f"LipSyncJob {meta.get('namespace')}/{meta.get('name')}")
        if settings is not None:
            namespace = meta.get("namespace") or ""
            policy.check(job.spec, settings.cluster_policy(namespace), namespace=namespace)
        return job, None
    except LipSyncError as e:
        return None, e


def validate(body: Mapping[str, Any], settings: Settings | None = None) -> tuple[LipSyncJob | None, str | None]:
    """:func:`check`, with the refusal as a message: (job, None) or (None, message)."""
    job, error = check(body, settings)
    return job, None if error is None else error.message


def candidate(body: Mapping[str, Any], settings: Settings | None = None) -> queue.Candidate:
    """How the queue sees a LipSyncJob (for the kopf index); one the policy refuses is not valid."""
    meta = body.get("metadata") or {}
    st = body.get("status") or {}
    job, _ = check(body, settings)
    return queue.Candidate(
        namespace=meta.get("namespace") or "",
        name=meta.get("name") or "",
        uid=meta.get("uid") or "",
        created=meta.get("creationTimestamp") or "",
        gpu=bool(job and jobs_mod.needs_gpu(job)),
        valid=job is not None,
        finished=st.get("phase") in status.TERMINAL,
        deleting=bool(meta.get("deletionTimestamp")),
        phase=st.get("phase"),
        generation=meta.get("generation"),
        job=job,
    )


def job_fact(body: Mapping[str, Any]) -> queue.JobFact | None:
    """How the queue sees an operator-made Job (for the kopf index)."""
    owner = jobs_mod.owner_of(body)
    if owner is None:
        return None
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    uid = next((r.get("uid") for r in meta.get("ownerReferences") or [] if r.get("controller")), "")
    return queue.JobFact(
        namespace=owner[0], name=meta.get("name", ""), owner=owner[1], uid=uid or "",
        gpu=labels.get(jobs_mod.GPU_LABEL) == "true",
        finished=status.job_finished(body) is not None,
    )


def _api_message(body: str) -> str:
    """The ``message`` of a Kubernetes Status error body, else the body's start."""
    try:
        return str(json.loads(body).get("message") or body)[:300]
    except (ValueError, AttributeError):
        return (body or "")[:300]


def ref(namespace: str, name: str, uid: str | None) -> dict[str, Any]:
    """A minimal object for kopf's Event posting."""
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"namespace": namespace, "name": name, "uid": uid}}


class Controller:
    def __init__(self, settings: Settings, kube: Kube) -> None:
        self.settings = settings
        self.kube = kube
        self.dispatcher = queue.Dispatcher()
        self.statuses: dict[Key, dict[str, Any]] = {}
        self.uids: dict[Key, str] = {}
        self.locks: collections.defaultdict[Key, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        self.deleting: set[Key] = set()
        self.rejected: dict[Key, int] = {}  # generation of a spec change refused while rendering
        self.job_seen: dict[Key, Any] = {}  # last Job status handled, to skip no-op events
        self.cr_index: Any = None
        self.job_index: Any = None
        self.last_plan: queue.Plan | None = None
        self.metrics = Metrics(self)
        self._create_slots = asyncio.Semaphore(8)

    # ------------------------------------------------------------------ state
    def remember(self, body: Mapping[str, Any]) -> Key:
        """Seed the status cache from a LipSyncJob body the first time it is seen."""
        meta = body.get("metadata") or {}
        key = (meta.get("namespace"), meta.get("name"))
        uid = meta.get("uid")
        if self.uids.get(key) != uid:  # new object, or same name re-created
            self.uids[key] = uid
            self.statuses[key] = dict(body.get("status") or {})
            self.rejected.pop(key, None)
            self.job_seen.pop(key, None)
        return key

    def use_indexes(self, cr_index: Any, job_index: Any) -> None:
        self.cr_index, self.job_index = cr_index, job_index

    def _candidates(self) -> list[queue.Candidate]:
        return [c for store in (self.cr_index or {}).values() for c in store]

    def _job_facts(self) -> list[queue.JobFact]:
        return [j for store in (self.job_index or {}).values() for j in store]

    def snapshot(self) -> dict[str, Any]:
        phases = collections.Counter(s.get("phase") for s in self.statuses.values() if s.get("phase"))
        plan = self.last_plan
        return {
            "phases": dict(phases),
            "queued": len(plan.wait) if plan else 0,
            "gpu_running": (plan.running + sum(1 for c in plan.start if c.gpu)) if plan else 0,
            "budget": self.settings.gpu_budget,
            "calls": dict(self.kube.calls),
        }

    # ------------------------------------------------------------------ status
    async def write(self, key: Key, compute: Callable[[dict[str, Any]], dict[str, Any]],
                    *, event: bool = True) -> dict[str, Any] | None:
        """Compute the new status from the cached one and patch what changed."""
        async with self.locks[key]:
            cur = self.statuses.get(key, {})
            new = compute(dict(cur))
            if key in self.rejected and new.get("phase") in status.IN_PROGRESS:
                msg = new.get("message")
                new["message"] = status.IMMUTABLE_MESSAGE + (f" (running as before: {msg})" if msg else "")
            patch = status.merge_patch(cur, new)
            if not patch:
                return cur
            # The cache says what is being written before the request returns, so a dispatch that
            # runs meanwhile already sees e.g. a Failed phase and does not start a Job for it.
            self.statuses[key] = new
            try:
                written = await self.kube.patch_status(key[0], key[1], patch)
            except BaseException:
                self.statuses[key] = cur
                raise
            if written is None:  # the LipSyncJob is gone
                self.statuses.pop(key, None)
                return None
        if new.get("phase") != cur.get("phase"):
            self.metrics.transition(cur, new)
            if event:
                self._announce(key, new)
        return new

    def _announce(self, key: Key, new: Mapping[str, Any]) -> None:
        obj = ref(key[0], key[1], self.uids.get(key))
        phase = new.get("phase")
        text = f"{phase}: {new.get('message') or ''}".strip(": ")
        try:
            # kopf.event, not kopf.info: posting.level (WARNING) keeps handler chatter out of Events.
            kopf.event(obj, type="Warning" if phase == "Failed" else "Normal",
                       reason=(new.get("reason") or "Failed") if phase == "Failed" else (phase or "Updated"),
                       message=text)
        except Exception:  # pragma: no cover - Events are best effort
            log.exception("could not post an Event for %s/%s", *key)

    # ------------------------------------------------------------------ lifecycle
    async def accept(self, body: Mapping[str, Any]) -> None:
        """On create/resume: an invalid spec fails at once (no Job); a valid one is left to
        :meth:`dispatch`, which writes Pending (Job created) or Queued in one status write."""
        key = self.remember(body)
        gen = (body.get("metadata") or {}).get("generation")
        if self.statuses.get(key, {}).get("phase") in status.TERMINAL:
            return
        job, error = check(body, self.settings)
        now = status.now_iso()
        if job is None:
            reason = error.reason if error is not None else "InvalidSpec"
            message = error.message if error is not None else "invalid spec"
            await self.write(key, lambda c: status.invalid(c, message, gen, now, reason=reason))
        elif self.statuses.get(key, {}).get("phase") and self.statuses[key].get("observedGeneration") != gen:
            # An accepted edit (still waiting): say the new generation was seen.
            await self.write(key, lambda c: status.build(
                c, phase=c["phase"], reason=c.get("reason"), message=c.get("message"), generation=gen, now=now))

    async def spec_changed(self, body: Mapping[str, Any]) -> None:
        """A spec edit: taken while nothing runs yet; refused (and said so) once a Job exists."""
        key = self.remember(body)
        gen = (body.get("metadata") or {}).get("generation")
        cur = self.statuses.get(key, {})
        has_job = key in self.dispatcher.started or any(j.key == key for j in self._job_facts())
        if has_job or cur.get("phase") in ("Running", "Succeeded", "Failed"):
            self.rejected[key] = gen or 0
            kopf.event(ref(key[0], key[1], self.uids.get(key)), type="Warning", reason="SpecImmutable",
                       message=status.IMMUTABLE_MESSAGE)
            now = status.now_iso()
            await self.write(key, lambda c: status.build(
                c, phase=c.get("phase") or "Pending", generation=gen, now=now,
                reason=c.get("reason"), message=c.get("message"),
                **{k: v for k, v in c.items() if k not in ("phase", "reason", "message", "conditions", "observedGeneration")}),
                event=False)
            return
        await self.accept(body)

    async def deleted(self, body: Mapping[str, Any]) -> None:
        """The LipSyncJob is going: delete its Job (Background propagation), free its slot."""
        meta = body.get("metadata") or {}
        key = (meta.get("namespace"), meta.get("name"))
        self.deleting.add(key)
        name = jobs_mod.job_name(meta.get("name", ""), meta.get("uid", ""))
        if await self.kube.delete_job(key[0], name):
            log.info("deleted Job %s/%s of a deleted LipSyncJob", key[0], name)
        self.dispatcher.forget(key)
        self.statuses.pop(key, None)
        self.job_seen.pop(key, None)
        self.rejected.pop(key, None)

    def gone(self, key: Key) -> None:
        """The LipSyncJob has disappeared from the cluster."""
        self.deleting.discard(key)
        self.uids.pop(key, None)
        self.locks.pop(key, None)

    # ------------------------------------------------------------------ the queue
    async def dispatch(self) -> queue.Plan | None:
        """Start what may start; mark the rest Queued. Safe to call often and concurrently."""
        if self.cr_index is None:
            return None
        async with self.dispatcher.lock:
            jobs = self._job_facts()
            self.dispatcher.seen(jobs)
            cands = [c for c in self._candidates() if c.key not in self.deleting
                     and self.statuses.get(c.key, {}).get("phase") not in status.TERMINAL]
            plan = queue.plan(cands, jobs, budget=self.settings.gpu_budget,
                              in_flight=self.dispatcher.started.values(),
                              kueue=bool(self.settings.kueue_queue))
            for c in plan.start:
                self.dispatcher.started[c.key] = c
            self.last_plan = plan
        if plan.start:
            await asyncio.gather(*(self._start(c) for c in plan.start))
        now = status.now_iso()
        for c in plan.wait:
            cur = self.statuses.get(c.key)
            phase = cur.get("phase") if cur is not None else c.phase
            if phase != "Queued":
                self.uids.setdefault(c.key, c.uid)
                if cur is None:
                    self.statuses[c.key] = {"phase": c.phase} if c.phase else {}
                await self.write(c.key, lambda s, c=c: status.queued(
                    s, generation=c.generation, now=now, budget=self.settings.gpu_budget))
        return plan

    async def _start(self, c: queue.Candidate) -> None:
        """Create (or adopt) the Job of one admitted LipSyncJob."""
        assert c.job is not None
        manifest = jobs_mod.job_manifest(c.job, self.settings)
        name = manifest["metadata"]["name"]
        try:
            async with self._create_slots:
                try:
                    job = await self.kube.create_job(c.namespace, manifest)
                    verb = "created"
                except KubeError as e:
                    if e.status != 409:
                        raise
                    job = await self.kube.read_job(c.namespace, name)
                    verb = "adopted"
                    if job is None or jobs_mod.owner_of(job) != c.key:
                        raise RuntimeError(f"Job {name} exists but is not this LipSyncJob's (yet)")
        except Exception as e:
            self.dispatcher.forget(c.key)
            why = f"{e.status} {e.reason}: {_api_message(e.body)}" if isinstance(e, KubeError) else str(e)
            log.warning("could not start %s/%s: %s (retried on the next dispatch)", c.namespace, c.name, why)
            self.uids.setdefault(c.key, c.uid)
            now = status.now_iso()
            written = await self.write(c.key, lambda s: status.build(
                s, phase="Pending", reason="JobCreateFailed", generation=c.generation, now=now,
                message=f"could not create Job {name}: {why}; retrying"), event=False)
            if written is not None and written.get("reason") == "JobCreateFailed":
                kopf.event(ref(c.namespace, c.name, c.uid), type="Warning", reason="JobCreateFailed",
                           message=f"could not create Job {name}: {why}")
            return
        self.uids.setdefault(c.key, c.uid)
        waited = seconds_between(c.created, status.now_iso())
        if waited is not None and verb == "created":
            self.metrics.wait.observe(waited)
        kopf.event(ref(c.namespace, c.name, c.uid), type="Normal",
                   reason="JobCreated" if verb == "created" else "JobAdopted",
                   message=f"{verb} Job {name}" + (" (GPU)" if c.gpu else ""))
        now = status.now_iso()
        await self.write(c.key, lambda s: status.from_job(s, job, [], generation=c.generation, now=now,
                                                           job_name=name))

    # ------------------------------------------------------------------ Jobs
    async def job_event(self, event_type: str | None, job: Mapping[str, Any]) -> None:
        """A Job of ours changed: bring its LipSyncJob's status in line."""
        fact = job_fact(job)
        if fact is None:
            return
        key = fact.key
        if key in self.deleting or (key in self.uids and self.uids[key] != fact.uid):
            return  # being deleted, or the Job of an earlier LipSyncJob of the same name
        if key not in self.statuses:
            cand = next((c for c in self._candidates() if c.key == key and c.uid == fact.uid), None)
            if cand is None:
                return  # its LipSyncJob is gone (the garbage collector follows)
            self.uids[key] = cand.uid
            self.statuses[key] = {"phase": cand.phase} if cand.phase else {}
        cur = self.statuses.get(key, {})
        if cur.get("phase") in status.TERMINAL:
            return
        gen = self._generation(key)
        now = status.now_iso()
        if event_type == "DELETED":
            if not fact.finished:
                await self.write(key, lambda s: status.build(
                    s, phase="Failed", reason="JobDeleted", generation=gen, now=now, finishedAt=now,
                    message=f"its Job {fact.name} was deleted before it finished: delete and re-apply to render again"))
            return
        seen = (job.get("spec") or {}).get("suspend"), job.get("status")
        if self.job_seen.get(key) == seen:
            return
        self.job_seen[key] = seen
        pods = jobs_mod.pods_of(await self.kube.list_pods(fact.namespace, f"{jobs_mod.UID_LABEL}={fact.uid}"), fact.uid)
        await self.write(key, lambda s: status.from_job(s, job, pods, generation=gen, now=now, job_name=fact.name))

    def _generation(self, key: Key) -> int | None:
        store = (self.cr_index or {}).get(key) or []
        return next((c.generation for c in store), None)

    # ------------------------------------------------------------------ progress
    async def poll_progress(self, key: Key, uid: str) -> None:
        """One progress poll of a Running LipSyncJob (see the module docstring)."""
        if self.statuses.get(key, {}).get("phase") != "Running":
            return
        pods = jobs_mod.pods_of(await self.kube.list_pods(key[0], f"{jobs_mod.UID_LABEL}={uid}"), uid)
        pod = status.running_pod(pods)
        if pod is None:
            return
        text = await self.kube.read_pod_log(key[0], pod["metadata"]["name"], tail_lines=200,
                                            container=jobs_mod.CONTAINER)
        found = status.last_progress(text)
        if found is None:
            return
        pct, stage = found
        await self.write(key, lambda s: status.with_progress(s, pct, stage))

