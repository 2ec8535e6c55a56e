"""The operator's actions: the I/O around the pure functions of ``jobs``, ``status``, ``queue``.

``handlers`` (kopf) calls these methods and nothing else; these methods call the API server only
through :class:`~lipsync_operator.kube.Kube`, and kopf only for Events.

Status writing: the operator is the only writer of ``.status``. Each LipSyncJob's last written
status is cached here, and every write is computed from it under a per-object lock and sent as a
JSON merge patch of the changed keys through the status subresource. So the Job watcher, the
progress poller and the dispatcher cannot overwrite each other's newer facts, and a write that
changes nothing costs no API call.

Progress: while a LipSyncJob is Running, the work loop polls every ``LIPSYNC_PROGRESS_INTERVAL``
seconds (default 5): it lists the Job's pods, tails the running pod's log (``tailLines=200``) and
takes the last ``{"event": "progress", ...}`` line. Polling the log was chosen over the runner
patching its own status (the runner never talks to Kubernetes and needs no RBAC), over pod
annotations (same) and over the termination message (only written at the end). The runner prints
at most one progress line every 2 s; 200 lines leave room for its other log lines in between
(when none is found, the last known progress stays).
"""

from __future__ import annotations

import asyncio
import dataclasses
import collections
import datetime
import json
import logging
import random
from typing import Any, Callable, Mapping

import kopf

from lipsync import policy
from lipsync.errors import LipSyncError, NotAllowed
from lipsync.spec import API_VERSION, KIND, LipSyncJob, parse_job

from . import jobs as jobs_mod
from . import queue, status
from .kube import Kube, KubeError
from .metrics import Metrics, seconds_between
from .output import published
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
            slots = jobs_mod.gpu_slots(job)
            if not settings.kueue_queue and slots > settings.gpu_budget:
                raise NotAllowed(
                    f"spec.parallelism {slots}: each pod of a GPU model takes one GPU of this operator's budget, "
                    f"which is {settings.gpu_budget} (LIPSYNC_GPU_BUDGET); the render could never start. "
                    f"Lower spec.parallelism to at most {settings.gpu_budget}")
        return job, None
    except LipSyncError as e:
        return None, e


def validate(body: Mapping[str, Any], settings: Settings | None = None) -> tuple[LipSyncJob | None, str | None]:
    """:func:`check`, with the refusal as a message: (job, None) or (None, message)."""
    job, error = check(body, settings)
    return job, None if error is None else error.message


ARRIVAL_ANNOTATION = "lipsync.dev/arrival"
_first_seen: dict[str, str] = {}  # uid -> when this process first saw it (until it is annotated)


def arrival(meta: Mapping[str, Any]) -> str:
    """When the operator first saw a LipSyncJob (RFC 3339, microseconds): the FIFO tie-break for
    jobs created in the same second (``creationTimestamp`` has whole seconds). kopf's watch
    delivers creations in order, so first sight is creation order; the create handler keeps it
    in the ``lipsync.dev/arrival`` annotation so that a restarted operator keeps the order."""
    annotated = (meta.get("annotations") or {}).get(ARRIVAL_ANNOTATION)
    uid = meta.get("uid") or ""
    if annotated:
        _first_seen.pop(uid, None)
        return str(annotated)
    if uid not in _first_seen:
        _first_seen[uid] = datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="microseconds").replace("+00:00", "Z")
    return _first_seen[uid]


def forget_arrival(uid: str | None) -> None:
    _first_seen.pop(uid or "", None)


def candidate(body: Mapping[str, Any], settings: Settings | None = None) -> queue.Candidate:
    """How the queue sees a LipSyncJob (for the kopf index); one the policy refuses is not valid."""
    meta = body.get("metadata") or {}
    st = body.get("status") or {}
    job, error = check(body, settings)
    return queue.Candidate(
        namespace=meta.get("namespace") or "",
        name=meta.get("name") or "",
        uid=meta.get("uid") or "",
        created=meta.get("creationTimestamp") or "",
        gpu=bool(job and jobs_mod.needs_gpu(job)),
        slots=max(1, jobs_mod.gpu_slots(job)) if job is not None else 1,
        valid=job is not None,
        error=error.message if error is not None else None,
        error_reason=error.reason if error is not None else None,
        digest=jobs_mod.spec_digest(jobs_mod.runner_document(job)["spec"]) if job is not None else None,
        finished=st.get("phase") in status.TERMINAL,
        deleting=bool(meta.get("deletionTimestamp")),
        phase=st.get("phase"),
        generation=meta.get("generation"),
        job=job,
        started=bool(st.get("jobName")) or st.get("phase") == "Running",
        arrival=arrival(meta),
        status=dict(st),
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
        slots=max(1, int((body.get("spec") or {}).get("parallelism") or 1)),
        step=jobs_mod.step_of(dict(body)),
        reserves=1 if labels.get(jobs_mod.STITCH_GPU_LABEL) == "true" and status.job_finished(body) == "Succeeded" else 0,
        body=jobs_mod.job_facts_body(body),
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


DISPATCH: Key = ("", "")  # the work queue's key for "run the dispatcher"
BACKOFF_FIRST_S = 0.5
BACKOFF_CAP_S = 30.0


class Controller:
    def __init__(self, settings: Settings, kube: Kube) -> None:
        self.settings = settings
        self.kube = kube
        self.dispatcher = queue.Dispatcher()
        self.statuses: dict[Key, dict[str, Any]] = {}
        self.uids: dict[Key, str] = {}
        self.locks: collections.defaultdict[Key, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        self.reconciling: collections.defaultdict[Key, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        self.deleting: set[Key] = set()
        self.job_seen: dict[Key, Any] = {}  # the Job state last written into the status, to skip no-ops
        self.index_progress: dict[Key, dict[int, int]] = {}  # an Indexed render: index -> last percent
        self.stitched: dict[Key, dict[str, Any]] = {}  # stitch Jobs this process made (the index may lag)
        self.stitch_locks: collections.defaultdict[Key, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        self.cr_index: Any = None
        self.job_index: Any = None
        self.last_plan: queue.Plan | None = None
        self.metrics = Metrics(self)
        self._create_slots = asyncio.Semaphore(8)
        # The work queue: key -> when (loop time) it is due; failures per key for the backoff.
        self.due: dict[Key, float] = {}
        self.failures: collections.Counter[Key] = collections.Counter()
        self.create_after: dict[Key, float] = {}  # loop time before which a failed create is not retried
        self._wake = asyncio.Event()
        self.tasks: list[asyncio.Task] = []  # the work loop and the progress poller, started once
        # Set while this replica may act (always, without leader election; see leader.py).
        self.leading = asyncio.Event()
        self.leading.set()

    # ------------------------------------------------------------------ state
    def remember(self, body: Mapping[str, Any]) -> Key:
        """Seed the status cache from a LipSyncJob body the first time it is seen."""
        meta = body.get("metadata") or {}
        key = (meta.get("namespace"), meta.get("name"))
        self._seed(key, meta.get("uid"), body.get("status") or {})
        return key

    def _seed(self, key: Key, uid: str | None, st: Mapping[str, Any]) -> None:
        if self.uids.get(key) != uid:  # new object, or same name re-created
            self.uids[key] = uid or ""
            self.statuses[key] = dict(st)
            self.job_seen.pop(key, None)

    def use_indexes(self, cr_index: Any, job_index: Any) -> None:
        self.cr_index, self.job_index = cr_index, job_index

    def _candidates(self) -> list[queue.Candidate]:
        return [c for store in (self.cr_index or {}).values() for c in store]

    def _candidate(self, key: Key) -> queue.Candidate | None:
        store = (self.cr_index or {}).get(key) or []
        return next(iter(store), None)

    def _job_facts(self) -> list[queue.JobFact]:
        return [j for store in (self.job_index or {}).values() for j in store]

    def _facts_of(self, key: Key, uid: str) -> list[queue.JobFact]:
        store = (self.job_index or {}).get(key) or []
        return self._made_by_us(key, [j for j in store if j.uid == uid])

    def _made_by_us(self, key: Key, facts: list[queue.JobFact], cur: Mapping[str, Any] | None = None
                    ) -> list[queue.JobFact]:
        """The Jobs of ``facts`` this operator made: the ones its status (written by the operator
        alone) names, the one it is creating now, the stitch it created. Anyone who may create
        Jobs in the namespace can label one as ours and point it at a LipSyncJob; such a Job is
        neither counted against the GPU budget nor taken for the LipSyncJob's render (adopting a
        Job of our name on a 409 checks its spec against ours: ``_adoptable``)."""
        if not facts:
            return facts
        if cur is None:
            cand = self._candidate(key)
            cur = self.statuses.get(key) or (cand.status if cand is not None else None) or {}
        names = {cur.get("jobName"), cur.get("stitchJobName")}
        started = self.dispatcher.started.get(key)
        if started is not None:
            names.add(jobs_mod.job_name(key[1], started.uid))
        made = self.stitched.get(key)
        if made is not None:
            names.add((made.get("metadata") or {}).get("name"))
        return [f for f in facts if f.name in names]

    def snapshot(self) -> dict[str, Any]:
        phases = collections.Counter(s.get("phase") for s in self.statuses.values() if s.get("phase"))
        plan = self.last_plan
        return {
            "phases": dict(phases),
            "queued": len(plan.wait) if plan else 0,
            "gpu_running": (plan.running + sum(c.slots for c in plan.start if c.gpu)) if plan else 0,
            "budget": self.settings.gpu_budget,
            "calls": dict(self.kube.calls),
        }

    # ------------------------------------------------------------------ the work queue
    def kick(self, key: Key, delay: float = 0.0) -> None:
        """Reconcile ``key`` (or dispatch, for :data:`DISPATCH`) after ``delay`` seconds."""
        when = asyncio.get_running_loop().time() + delay
        if key not in self.due or self.due[key] > when:
            self.due[key] = when
        self._wake.set()

    async def attempt(self, key: Key) -> bool:
        """One reconcile (or dispatch) of ``key``; on any failure it is queued again with backoff.

        A replica that is not the leader does nothing (the leader's resync covers everything)."""
        if not self.leading.is_set():
            return True
        try:
            if key == DISPATCH:
                await self.dispatch()
            else:
                async with self.reconciling[key]:  # one at a time per object: no duplicate reads
                    await self.reconcile(key)
        except Exception as e:  # an API fault delays the truth; the queue tries again
            n = self.failures[key] = self.failures[key] + 1
            delay = min(BACKOFF_CAP_S, BACKOFF_FIRST_S * 2 ** (n - 1)) * random.uniform(0.5, 1.0)
            why = f"{e.status} {e.reason}" if isinstance(e, KubeError) else repr(e)
            log.warning("reconcile of %s failed (%s); retrying in %.1f s", "/".join(key) or "the queue", why, delay)
            self.kick(key, delay)
            return False
        self.failures.pop(key, None)
        return True

    async def run(self) -> None:
        """The work loop: due keys, and every ``resync_seconds`` every unfinished LipSyncJob.

        Level-triggered: what a reconcile writes is computed from what exists (the indexes, the
        Job, its pods, the output), never from the event that queued it, so a retried or
        repeated reconcile is harmless and a missed event is made good by the next resync.
        """
        loop = asyncio.get_running_loop()
        next_resync = loop.time()
        slots = asyncio.Semaphore(8)

        async def one(key: Key) -> None:
            async with slots:
                await self.attempt(key)

        while True:
            if not self.leading.is_set():
                await self.leading.wait()
                # A new leader starts from what the indexes show now (its cache may be older than
                # the last leader's writes) with a full resync.
                self.statuses.clear()
                self.uids.clear()
                self.job_seen.clear()
                next_resync = loop.time()
            now = loop.time()
            if self.cr_index is not None and now >= next_resync:
                next_resync = now + self.settings.resync_seconds
                for c in self._candidates():
                    if not c.finished and not c.deleting:
                        self.due.setdefault(c.key, now)
                live = {(c.key, c.uid) for c in self._candidates()}
                for j in self._job_facts():
                    if (j.key, j.uid) not in live:  # a Job whose LipSyncJob is gone
                        self.due.setdefault(j.key, now)
                self.due.setdefault(DISPATCH, now)
            ready = [k for k, t in self.due.items() if t <= now] if self.cr_index is not None else []
            for k in ready:
                del self.due[k]
            work = [k for k in ready if k != DISPATCH]
            if work:
                await asyncio.gather(*(one(k) for k in work))
            if DISPATCH in ready:
                await self.attempt(DISPATCH)
            self._wake.clear()
            later = [t for t in self.due.values()] + ([next_resync] if self.cr_index is not None else [])
            timeout = max(0.0, min(later) - loop.time()) if later else self.settings.resync_seconds
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=min(timeout, self.settings.resync_seconds))
            except asyncio.TimeoutError:
                pass

    # ------------------------------------------------------------------ status
    async def write(self, key: Key, compute: Callable[[dict[str, Any]], dict[str, Any]],
                    *, event: bool = True) -> dict[str, Any] | None:
        """Compute the new status from the cached one and patch what changed."""
        async with self.locks[key]:
            cur = self.statuses.get(key, {})
            new = self._observe(key, compute(dict(cur)))
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
        if status.refused(new) and not status.refused(cur):
            kopf.event(ref(key[0], key[1], self.uids.get(key)), type="Warning", reason="SpecImmutable",
                       message=new.get("message") or status.IMMUTABLE_MESSAGE)
        return new

    def _observe(self, key: Key, new: dict[str, Any]) -> dict[str, Any]:
        """kstatus for the newest generation the index shows (see :func:`status.observe`)."""
        cand = self._candidate(key)
        if cand is None or cand.uid != self.uids.get(key):
            return new
        spec_refused = bool(new.get("specDigest")) and cand.digest != new.get("specDigest")
        return status.observe(new, generation=cand.generation, spec_refused=spec_refused, now=status.now_iso())

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
        """On create/resume/spec edit: reconcile now (retried through the work queue on failure)."""
        key = self.remember(body)
        await self.attempt(key)

    async def spec_changed(self, body: Mapping[str, Any]) -> None:
        """A spec edit: taken while nothing runs yet; refused (and said so) once a Job exists."""
        await self.accept(body)

    async def deleted(self, body: Mapping[str, Any]) -> None:
        """The LipSyncJob is going: delete its Job (Background propagation), free its slot."""
        meta = body.get("metadata") or {}
        key = (meta.get("namespace"), meta.get("name"))
        self.deleting.add(key)
        if not self.leading.is_set():
            return
        name = ((body.get("status") or {}).get("jobName")
                or jobs_mod.job_name(meta.get("name", ""), meta.get("uid", "")))
        stitch = ((body.get("status") or {}).get("stitchJobName")
                  or jobs_mod.stitch_job_name(meta.get("name", ""), meta.get("uid", "")))
        for job in (name, stitch):
            if await self.kube.delete_job(key[0], job):
                log.info("deleted Job %s/%s of a deleted LipSyncJob", key[0], job)
        self.dispatcher.forget(key)
        self.statuses.pop(key, None)
        self.job_seen.pop(key, None)
        self.due.pop(key, None)

    def gone(self, key: Key) -> None:
        """The LipSyncJob has disappeared from the cluster."""
        self.deleting.discard(key)
        forget_arrival(self.uids.get(key))
        self.uids.pop(key, None)
        self.locks.pop(key, None)
        self.reconciling.pop(key, None)
        self.statuses.pop(key, None)
        self.job_seen.pop(key, None)
        self.index_progress.pop(key, None)
        self.stitched.pop(key, None)
        self.stitch_locks.pop(key, None)
        self.due.pop(key, None)
        self.failures.pop(key, None)
        self.create_after.pop(key, None)

    # ------------------------------------------------------------------ reconcile
    async def reconcile(self, key: Key) -> None:
        """Bring one LipSyncJob's status in line with what exists. Raises on an API fault.

        * invalid spec, no Job: Failed/InvalidSpec;
        * its Job exists: the status from the Job and its pods;
        * its status says a Job was created (``jobName``) but there is none: the Job was deleted
          (by a person, or by its TTL after it finished) while no event reached the operator.
          The outcome is then the published ``metrics.json`` of this very LipSyncJob (uid):
          Succeeded; else Failed/JobDeleted. Never a second Job;
        * otherwise it waits for the dispatcher (queue).
        """
        cand = self._candidate(key)
        for f in (self.job_index or {}).get(key) or []:
            if cand is None or f.uid != cand.uid:
                # Its LipSyncJob is gone (deleted at once: there is no finalizer) or was re-created:
                # the garbage collector would remove the Job too; the operator does not wait for it.
                if await self.kube.delete_job(key[0], f.name):
                    log.info("deleted Job %s/%s: its LipSyncJob is gone", key[0], f.name)
        if cand is None or cand.deleting or key in self.deleting:
            return
        self._seed(key, cand.uid, cand.status or {})
        cur = self.statuses.get(key, {})
        if cur.get("phase") in status.TERMINAL:
            await self.write(key, lambda c: c)  # final; only a spec edit (refused, or reverted) shows
            return
        gen = cand.generation
        now = status.now_iso()
        facts = self._facts_of(key, cand.uid)
        created = cur.get("jobName") or cur.get("phase") == "Running" or cand.started
        if not facts and not created:
            if cand.job is None:
                await self.write(key, lambda c: status.invalid(c, cand.error or "invalid spec", gen, now,
                                                               reason=cand.error_reason or "InvalidSpec"))
            else:
                await self.write(key, lambda c: c)  # an accepted edit (still waiting): the new generation seen
            return
        if self._indexed(cand, cur, facts):
            await self._reconcile_indexed(key, cand, cur, facts, gen, now)
            return
        if facts:
            fact = next((f for f in facts if f.name == cur.get("jobName")), None) or \
                next((f for f in facts if not f.finished), facts[-1])
            for other in facts:
                if other is not fact and _unadmitted(other):  # left over from an interrupted replacement
                    await self.kube.delete_job(key[0], other.name)
            if self.settings.kueue_queue and _unadmitted(fact) and cand.job is not None \
                    and cand.digest != fact.body.get("specDigest"):
                await self._replace(cand, fact, now)  # an edit while only queued in Kueue: taken
                return
            job, name = fact.body, fact.name
        else:
            if key in self.dispatcher.started:
                return  # created a moment ago; its watch event is on the way
            name = cur.get("jobName") or jobs_mod.job_name(key[1], cand.uid)
            job = await self.kube.read_job(key[0], name)  # the index may lag: ask before concluding
            if job is not None and jobs_mod.owner_of(job) == key and _controller_uid(job) == cand.uid:
                job = jobs_mod.job_facts_body(job)
            else:
                await self._without_job(key, cand, name, gen, now)
                return
        seen = (name, job)
        if self.job_seen.get(key) == seen:
            await self.write(key, lambda c: c)  # the Job is as written; a spec edit may not be
            return
        pods = jobs_mod.pods_of(await self.kube.list_pods(key[0], f"{jobs_mod.UID_LABEL}={cand.uid}"), cand.uid)
        await self.write(key, lambda s: status.from_job(s, job, pods, generation=gen, now=now, job_name=name))
        self.job_seen[key] = seen

    # ------------------------------------------------------------------ spec.parallelism > 1
    @staticmethod
    def _indexed(cand: queue.Candidate, cur: Mapping[str, Any], facts: list[queue.JobFact]) -> bool:
        """Whether this LipSyncJob renders as an Indexed Job plus a stitch Job (what exists first:
        its Jobs (the one its status names, if any), then its status, then its spec)."""
        named = [f for f in facts if f.name in (cur.get("jobName"), cur.get("stitchJobName"))]
        for f in named or facts:
            if f.step == jobs_mod.STITCH or ((f.body or {}).get("spec") or {}).get("completionMode") == "Indexed":
                return True
        if facts:
            return False
        if cur.get("indices") or cur.get("stitchJobName"):
            return True
        return cand.job is not None and jobs_mod.parallelism(cand.job) > 1

    async def _reconcile_indexed(self, key: Key, cand: queue.Candidate, cur: Mapping[str, Any],
                                 facts: list[queue.JobFact], gen: int | None, now: str) -> None:
        """The render Job (Indexed) → when Complete, create the stitch Job → its outcome.

        The stitch Job is made from the render Job's own runner document (never from a spec
        edited since), created once (a 409 adopts it after checking its owner).
        """
        render_name = cur.get("jobName") or jobs_mod.job_name(key[1], cand.uid)
        stitch_name = cur.get("stitchJobName") or jobs_mod.stitch_job_name(key[1], cand.uid)
        renders = [f for f in facts if f.step != jobs_mod.STITCH]
        fact = next((f for f in renders if f.name == cur.get("jobName")), None) or \
            next((f for f in renders if not f.finished), renders[-1] if renders else None)
        stitch = next((f.body for f in facts if f.step == jobs_mod.STITCH), None)
        for other in renders:
            if other is not fact and _unadmitted(other):  # left over from an interrupted replacement
                await self.kube.delete_job(key[0], other.name)
        if self.settings.kueue_queue and fact is not None and stitch is None and _unadmitted(fact) \
                and cand.job is not None and cand.digest != fact.body.get("specDigest"):
            await self._replace(cand, fact, now)  # an edit while only queued in Kueue: taken
            return
        render = fact.body if fact is not None else None
        if render is None and stitch is None and key in self.dispatcher.started:
            return  # created a moment ago; its watch event is on the way
        full: dict[str, Any] | None = None
        if render is None:  # the index may lag: ask before concluding
            full = await self._own_job(key, cand.uid, render_name)
            render = jobs_mod.job_facts_body(full) if full is not None else None
        if stitch is None and key in self.stitched:  # made by this process: the index lags, or it was deleted
            found = await self._own_job(key, cand.uid, stitch_name)
            if found is None:  # gone from the API itself: deleted since, never to be made again
                self.stitched.pop(key, None)
                await self._without_job(key, cand, stitch_name, gen, now)
                return
            stitch = jobs_mod.job_facts_body(found)
        if stitch is None and (render is None or status.job_finished(render) == "Succeeded") \
                and key not in self.stitched:
            found = await self._own_job(key, cand.uid, stitch_name)
            stitch = jobs_mod.job_facts_body(found) if found is not None else None
        if stitch is None and render is not None and status.job_finished(render) == "Succeeded" \
                and cur.get("phase") not in status.TERMINAL:
            async with self.stitch_locks[key]:  # two reconciles at once: one POST
                made = self.stitched.get(key)
                if made is None:
                    full = full or await self._own_job(key, cand.uid, render_name)
                    if full is not None:
                        made = self.stitched[key] = await self._create_stitch(key, cand.uid, full, stitch_name)
            if made is not None:
                stitch = jobs_mod.job_facts_body(made)
        if render is None and stitch is None:
            await self._without_job(key, cand, render_name, gen, now)
            return
        if stitch is None and render is not None and status.job_finished(render) == "Succeeded":
            # The render Job was made by an older operator or is unreadable: the stitch cannot be
            # made from it. Retried by the work queue.
            raise RuntimeError(f"Job {render_name} is Complete but its stitch Job could not be made")
        seen = (render_name, render, stitch)
        if self.job_seen.get(key) == seen:
            await self.write(key, lambda c: c)
            return
        total = int(((render or {}).get("spec") or {}).get("completions") or 0) \
            or int((cur.get("indices") or {}).get("total") or 0) \
            or (jobs_mod.parallelism(cand.job) if cand.job is not None else 1)
        pods = jobs_mod.pods_of(await self.kube.list_pods(key[0], f"{jobs_mod.UID_LABEL}={cand.uid}"), cand.uid)
        render_pods = [p for p in pods if jobs_mod.step_of(p) != jobs_mod.STITCH]
        stitch_pods = [p for p in pods if jobs_mod.step_of(p) == jobs_mod.STITCH]
        await self.write(key, lambda s: status.from_indexed(
            s, render or {}, render_pods, total=total, generation=gen, now=now, render_name=render_name,
            stitch=stitch, stitch_pods=stitch_pods, stitch_name=stitch_name if stitch is not None else None))
        self.job_seen[key] = seen

    async def _own_job(self, key: Key, uid: str, name: str) -> dict[str, Any] | None:
        """The Job ``name`` if it exists and this LipSyncJob (uid) controls it."""
        job = await self.kube.read_job(key[0], name)
        if job is not None and jobs_mod.owner_of(job) == key and _controller_uid(job) == uid:
            return job
        return None

    async def _create_stitch(self, key: Key, uid: str, render: dict[str, Any], name: str) -> dict[str, Any]:
        """Create (or adopt) the stitch Job, from the render Job's runner document."""
        doc = jobs_mod.runner_document_of(render)
        if doc is None:
            raise RuntimeError(f"Job {render['metadata']['name']} carries no LIPSYNC_JOB to stitch")
        job = parse_job(doc, source=f"Job {render['metadata']['name']}")
        manifest = jobs_mod.job_manifest(job, self.settings, step=jobs_mod.STITCH)
        try:
            made = await self.kube.create_job(key[0], manifest)
            verb = "created"
        except KubeError as e:
            if e.status != 409:
                raise
            made = await self._own_job(key, uid, name)
            verb = "adopted"
            if made is None:
                raise RuntimeError(f"Job {name} exists but is not this LipSyncJob's (yet)") from e
            await self._adoptable(key[0], made, manifest)
        kopf.event(ref(key[0], key[1], uid), type="Normal",
                   reason="StitchJobCreated" if verb == "created" else "StitchJobAdopted",
                   message=f"every index rendered; {verb} Job {name} to join the chunks and publish")
        return made

    async def _adoptable(self, namespace: str, job: dict[str, Any], manifest: dict[str, Any]) -> None:
        """A Job of our name that was already there (a create answered 409) is ours only if its
        spec is the one we would make (an earlier try of ours); any other was made by someone
        else, is deleted, and the create is tried again."""
        if jobs_mod.made_as(job) == jobs_mod.made_as(manifest):
            return
        name = job["metadata"]["name"]
        await self.kube.delete_job(namespace, name)
        log.warning("deleted Job %s/%s: it has this operator's name and labels but not a spec it made", namespace, name)
        raise RuntimeError(f"Job {name} existed with a spec this operator did not make: deleted; creating it again")

    async def _replace(self, cand: queue.Candidate, old: queue.JobFact, now: str) -> None:
        """A suspended Job that Kueue never admitted, for a spec since edited: the edit is taken.

        The Job of the new spec (its name carries the generation) is created first, the status
        then names it, and only then is the old Job deleted, so that no step leaves the
        LipSyncJob without a Job its status names.
        """
        assert cand.job is not None
        manifest = jobs_mod.job_manifest(cand.job, self.settings, generation=cand.generation)
        name = manifest["metadata"]["name"]
        try:
            job = await self.kube.create_job(cand.namespace, manifest)
        except KubeError as e:
            if e.status != 409:
                raise
            job = await self.kube.read_job(cand.namespace, name)
            if job is None or _controller_uid(job) != cand.uid:
                raise RuntimeError(f"Job {name} exists but is not this LipSyncJob's (yet)") from None
        body = jobs_mod.job_facts_body(job)
        total = jobs_mod.parallelism(cand.job)

        def compute(s: dict[str, Any]) -> dict[str, Any]:
            if total > 1:
                return status.from_indexed(s, body, [], total=total, generation=cand.generation, now=now,
                                           render_name=name)
            s = {k: v for k, v in s.items() if k != "indices"}  # the replaced Job was Indexed
            return status.from_job(s, body, [], generation=cand.generation, now=now, job_name=name)
        await self.write(cand.key, compute)
        self.job_seen.pop(cand.key, None)
        await self.kube.delete_job(cand.namespace, old.name)
        kopf.event(ref(cand.namespace, cand.name, cand.uid), type="Normal", reason="JobReplaced",
                   message=f"spec edited while queued in Kueue: Job {name} replaces {old.name}")

    async def _without_job(self, key: Key, cand: queue.Candidate, name: str, gen: int | None, now: str) -> None:
        """The Job is gone and no event said how it ended: the published output, else JobDeleted."""
        found = await published(cand)
        if found is not None:
            await self.write(key, lambda s: status.published(s, found, generation=gen, now=now, job_name=name))
        else:
            await self.write(key, lambda s: status.build(
                s, phase="Failed", reason="JobDeleted", generation=gen, now=now, finishedAt=now, jobName=name,
                message=f"its Job {name} was deleted before it finished: delete and re-apply to render again"))

    # ------------------------------------------------------------------ the queue
    async def dispatch(self) -> queue.Plan | None:
        """Start what may start; mark the rest Queued. Safe to call often and concurrently.

        Raises after trying every write if one failed (the work queue retries the dispatch).
        """
        if self.cr_index is None:
            return None
        async with self.dispatcher.lock:
            by_owner: dict[Key, list[queue.JobFact]] = collections.defaultdict(list)
            for j in self._job_facts():
                by_owner[j.key].append(j)
            jobs = [dataclasses.replace(j, reserves=0)  # a stitch that will never be made holds nothing
                    if j.reserves and self.statuses.get(j.key, {}).get("phase") in status.TERMINAL else j
                    for key, facts in by_owner.items() for j in self._made_by_us(key, facts)
                    # a finished LipSyncJob's Jobs have ended: one under its old name is not ours
                    if not (self.statuses.get(key, {}).get("phase") in status.TERMINAL and not j.finished)]
            self.dispatcher.seen(jobs)
            now_t = asyncio.get_running_loop().time()
            cands = [c for c in self._candidates() if c.key not in self.deleting
                     and self.statuses.get(c.key, {}).get("phase") not in status.TERMINAL
                     and not self.statuses.get(c.key, {}).get("jobName")
                     and self.create_after.get(c.key, 0.0) <= now_t]  # a failed create backs off
            plan = queue.plan(cands, jobs, budget=self.settings.gpu_budget,
                              in_flight=self.dispatcher.started.values(),
                              kueue=bool(self.settings.kueue_queue))
            for c in plan.start:
                self.dispatcher.started[c.key] = c
            self.last_plan = plan
            waits = [t for t in self.create_after.values() if t > now_t]
            if waits:  # come back when the first backoff ends
                self.kick(DISPATCH, min(waits) - now_t)
        if plan.start:
            await asyncio.gather(*(self._start(c) for c in plan.start))
        now = status.now_iso()
        failed: list[BaseException] = []
        for c in plan.wait:
            self._seed(c.key, c.uid, c.status or {})
            if self.statuses.get(c.key, {}).get("phase") != "Queued":
                try:
                    await self.write(c.key, lambda s, c=c: status.queued(
                        s, generation=c.generation, now=now, budget=self.settings.gpu_budget))
                except Exception as e:
                    failed.append(e)
        if failed:
            raise failed[0]
        return plan

    async def _start(self, c: queue.Candidate) -> None:
        """Create (or adopt) the Job of one admitted LipSyncJob."""
        assert c.job is not None
        manifest = jobs_mod.job_manifest(c.job, self.settings)
        name = manifest["metadata"]["name"]
        self._seed(c.key, c.uid, c.status or {})
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
                    if job is None or jobs_mod.owner_of(job) != c.key or _controller_uid(job) != c.uid:
                        raise RuntimeError(f"Job {name} exists but is not this LipSyncJob's (yet)")
                    await self._adoptable(c.namespace, job, manifest)
        except Exception as e:
            self.dispatcher.forget(c.key)
            why = f"{e.status} {e.reason}: {_api_message(e.body)}" if isinstance(e, KubeError) else str(e)
            n = self.failures[c.key] = self.failures[c.key] + 1
            delay = min(BACKOFF_CAP_S, BACKOFF_FIRST_S * 2 ** n)
            log.warning("could not start %s/%s: %s (retried in %.1f s)", c.namespace, c.name, why, delay)
            self.create_after[c.key] = asyncio.get_running_loop().time() + delay
            self.kick(DISPATCH, delay)
            now = status.now_iso()
            try:
                written = await self.write(c.key, lambda s: status.build(
                    s, phase="Pending", reason="JobCreateFailed", generation=c.generation, now=now,
                    message=f"could not create Job {name}: {why}; retrying"), event=False)
            except Exception:
                log.warning("could not write the status of %s/%s either", c.namespace, c.name)
                return
            if written is not None and written.get("reason") == "JobCreateFailed" and n == 1:
                kopf.event(ref(c.namespace, c.name, c.uid), type="Warning", reason="JobCreateFailed",
                           message=f"could not create Job {name}: {why}")
            return
        self.failures.pop(c.key, None)
        self.create_after.pop(c.key, None)
        waited = seconds_between(c.created, status.now_iso())
        if waited is not None and verb == "created":
            self.metrics.wait.observe(waited)
        kopf.event(ref(c.namespace, c.name, c.uid), type="Normal",
                   reason="JobCreated" if verb == "created" else "JobAdopted",
                   message=f"{verb} Job {name}" + (" (GPU)" if c.gpu else ""))
        now = status.now_iso()
        body = jobs_mod.job_facts_body(job)
        total = jobs_mod.parallelism(c.job)

        def compute(s: dict[str, Any]) -> dict[str, Any]:
            if total > 1:
                return status.from_indexed(s, body, [], total=total, generation=c.generation, now=now,
                                           render_name=name)
            return status.from_job(s, body, [], generation=c.generation, now=now, job_name=name)
        try:
            await self.write(c.key, compute)
            if verb == "created":  # a new Job has no pods yet: the status is what it says
                self.job_seen.setdefault(c.key, (name, body) if total <= 1 else (name, body, None))
        except Exception:
            # The Job exists; the status that says so is retried (a reconcile finds the Job).
            self.kick(c.key, BACKOFF_FIRST_S)
            raise

    # ------------------------------------------------------------------ Jobs
    async def job_event(self, job: Mapping[str, Any]) -> None:
        """A Job of ours changed (or went): reconcile its LipSyncJob now, retried on failure."""
        fact = job_fact(job)
        if fact is None:
            return
        await self.attempt(fact.key)

    # ------------------------------------------------------------------ progress
    async def poll_forever(self) -> None:
        """Every ``LIPSYNC_PROGRESS_INTERVAL`` s, one progress poll of each Running LipSyncJob."""
        slots = asyncio.Semaphore(8)

        async def one(key: Key, uid: str) -> None:
            async with slots:
                try:
                    await self.poll_progress(key, uid)
                except Exception as e:  # a failed poll is not a failed render: next round
                    log.warning("progress poll of %s/%s failed: %s", *key, e)

        while True:
            await asyncio.sleep(self.settings.progress_interval)
            if not self.leading.is_set():
                continue
            running = [(k, self.uids.get(k) or "") for k, st in list(self.statuses.items())
                       if st.get("phase") == "Running" and k not in self.deleting]
            await asyncio.gather(*(one(k, uid) for k, uid in running))

    async def poll_progress(self, key: Key, uid: str) -> None:
        """One progress poll of a Running LipSyncJob (see the module docstring)."""
        if self.statuses.get(key, {}).get("phase") != "Running":
            return
        pods = jobs_mod.pods_of(await self.kube.list_pods(key[0], f"{jobs_mod.UID_LABEL}={uid}"), uid)
        cur = self.statuses.get(key, {})
        total = int((cur.get("indices") or {}).get("total") or 0)
        if total > 1 and not cur.get("stitchJobName"):
            await self._poll_indexed(key, total, [p for p in pods if jobs_mod.step_of(p) != jobs_mod.STITCH])
            return
        if cur.get("stitchJobName"):
            pods = [p for p in pods if jobs_mod.step_of(p) == jobs_mod.STITCH]
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

    async def _poll_indexed(self, key: Key, total: int, pods: list[dict[str, Any]]) -> None:
        """Progress of an Indexed render: each running index's last progress line, each done index
        100 %, averaged (:func:`status.aggregate_progress`)."""
        seen = self.index_progress.setdefault(key, {})
        stage = None
        for pod in pods:
            k = jobs_mod.index_of(pod)
            if k is None or status.running_pod([pod]) is None:
                continue
            text = await self.kube.read_pod_log(key[0], pod["metadata"]["name"], tail_lines=200,
                                                container=jobs_mod.CONTAINER)
            found = status.last_progress(text)
            if found is not None:
                seen[k] = max(seen.get(k, 0), found[0])
                stage = found[1] or stage
        done = status.indices_done({}, pods, total)
        pct = status.aggregate_progress(total, done, seen)
        await self.write(key, lambda s: status.with_progress(s, pct, stage))


def _unadmitted(fact: queue.JobFact) -> bool:
    """A suspended Job that never started (Kueue has not admitted it)."""
    body = fact.body or {}
    return bool((body.get("spec") or {}).get("suspend")) and not (body.get("status") or {}).get("startTime") \
        and not fact.finished


def _controller_uid(job: Mapping[str, Any]) -> str:
    refs = (job.get("metadata") or {}).get("ownerReferences") or []
    return next((r.get("uid") or "" for r in refs if r.get("controller")), "")
