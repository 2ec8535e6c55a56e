"""kopf handlers: translate API events into :class:`~lipsync_operator.controller.Controller` calls.

=================================== ========================================================
event                               action
=================================== ========================================================
startup                             kopf settings; the controller and its work loop
                                    (retries with backoff, resync every LIPSYNC_RESYNC_SECONDS);
                                    the metrics endpoint
login                               the same credentials as the operator's own client
LipSyncJob index / Job index        what the queue sees (filled before any handler runs)
LipSyncJob created / resumed        reconcile (invalid → Failed, no Job); dispatch
LipSyncJob spec edited              accepted while nothing runs; refused once a Job exists
LipSyncJob deleted (no finalizer)   delete its Job (Background propagation); dispatch
(work loop)                         poll Running jobs' progress every LIPSYNC_PROGRESS_INTERVAL s
Job of ours changed / deleted       reconcile its LipSyncJob (retried on failure); dispatch
=================================== ========================================================

Run as ``lipsync-operator`` (``main.py``): ``kopf run --standalone --all-namespaces``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from lipsync.spec import API_GROUP, API_VERSION, PLURAL

from . import jobs
from .controller import ARRIVAL_ANNOTATION, DISPATCH, Controller, arrival, candidate, job_fact
from .kube import Kube, connection_info
from .leader import Elector
from .settings import Settings

VERSION = API_VERSION.split("/", 1)[1]
CR = (API_GROUP, VERSION, PLURAL)
OURS = {jobs.MANAGED_BY_LABEL: jobs.MANAGED_BY}
FINALIZER = "lipsync.dev/cleanup"


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    # No runtime CRD/namespace scanning: no RBAC for customresourcedefinitions or namespaces.
    settings.scanning.disabled = True
    # No handler needs a finalizer (deletion is optional, progress is polled by the work loop), so
    # kopf adds none, and removes this one from objects an older operator gave it.
    settings.persistence.finalizer = FINALIZER
    # kopf's own bookkeeping in annotations, so .status holds only the LipSyncJobStatus schema.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="lipsync.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="lipsync.dev", key="last-handled-configuration")
    # Events for transitions come from kopf.event (controller.py); handler chatter stays in the logs.
    settings.posting.level = logging.WARNING
    settings.watching.label_selectors["batch", "jobs"] = f"{jobs.MANAGED_BY_LABEL}={jobs.MANAGED_BY}"
    ops = Settings.from_env()
    ctl = Controller(ops, Kube())
    memo.ctl = ctl
    ctl.metrics.serve(ops.metrics_port)
    if ops.lease_namespace:  # several replicas: only the Lease holder acts (leader.py)
        ctl.leading.clear()
        elector = Elector(ctl.kube, ops.lease_namespace, ops.lease_name, ops.lease_seconds, ctl.leading)
        memo.lease_loop = asyncio.create_task(elector.run())
    logger.info("lipsync-operator: GPU budget %s, kueue %s, image %s",
                ops.gpu_budget, ops.kueue_queue or "off", ops.runner_image)


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """In-cluster service account, else ``$KUBECONFIG``: the same credentials as ``kube.Kube``."""
    return kopf.ConnectionInfo(**connection_info())


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    ctl: Controller | None = getattr(memo, "ctl", None)
    for task in [getattr(memo, "lease_loop", None), *(ctl.tasks if ctl is not None else [])]:
        if task is not None:
            task.cancel()
    if ctl is not None:
        ctl.metrics.stop()
        ctl.kube.close()


# ---------------------------------------------------------------------------- indexes
@kopf.index(*CR)
def lipsyncjobs_idx(body: kopf.Body, namespace: str, name: str, memo: kopf.Memo, **_: Any) -> dict:
    ctl: Controller | None = getattr(memo, "ctl", None)
    return {(namespace, name): candidate(body, ctl.settings if ctl is not None else Settings.from_env())}


@kopf.index("batch", "v1", "jobs", labels=OURS)
def jobs_idx(body: kopf.Body, **_: Any) -> dict | None:
    fact = job_fact(body)
    return None if fact is None else {fact.key: fact}


def _ctl(memo: kopf.Memo, lipsyncjobs_idx: kopf.Index, jobs_idx: kopf.Index) -> Controller:
    """The controller, with the indexes (complete: kopf runs handlers only once they are filled).

    The first call starts the work loop, from a handler's context: kopf.event needs the Event
    queue that kopf puts in its handlers' context (not yet in the startup handler's).
    """
    ctl: Controller = memo.ctl
    ctl.use_indexes(lipsyncjobs_idx, jobs_idx)
    if not ctl.tasks:  # on the controller: a resource handler's memo is a per-object copy
        ctl.tasks = [asyncio.create_task(ctl.run()), asyncio.create_task(ctl.poll_forever())]
    return ctl


# ---------------------------------------------------------------------------- LipSyncJobs
# backoff: a failed call (API server hiccup) is retried in seconds, not kopf's default minute.
@kopf.on.resume(*CR, backoff=5)
@kopf.on.create(*CR, backoff=5)
async def created(body: kopf.Body, meta: kopf.Meta, patch: kopf.Patch, memo: kopf.Memo,
                  lipsyncjobs_idx: kopf.Index, jobs_idx: kopf.Index, **_: Any) -> None:
    if not (meta.get("annotations") or {}).get(ARRIVAL_ANNOTATION):
        # The queue's FIFO tie-break, kept across restarts (rides on kopf's own patch: no extra call).
        patch.metadata.annotations[ARRIVAL_ANNOTATION] = arrival(meta)
    ctl = _ctl(memo, lipsyncjobs_idx, jobs_idx)
    await ctl.accept(body)
    ctl.kick(DISPATCH)  # coalesced: one dispatch per turn of the work loop, however many events


@kopf.on.update(*CR, field="spec", backoff=5)
async def spec_changed(body: kopf.Body, memo: kopf.Memo, lipsyncjobs_idx: kopf.Index, jobs_idx: kopf.Index,
                       **_: Any) -> None:
    ctl = _ctl(memo, lipsyncjobs_idx, jobs_idx)
    await ctl.spec_changed(body)
    ctl.kick(DISPATCH)  # coalesced: one dispatch per turn of the work loop, however many events


# optional: no finalizer. A LipSyncJob is deleted at once, operator or not (its Job has an owner
# reference: the garbage collector removes it). Called only when another finalizer holds the object
# (e.g. kubectl delete --cascade=foreground); otherwise the DELETED event below does the cleanup.
@kopf.on.delete(*CR, backoff=5, optional=True)
async def deleted(body: kopf.Body, memo: kopf.Memo, lipsyncjobs_idx: kopf.Index, jobs_idx: kopf.Index,
                  **_: Any) -> None:
    ctl = _ctl(memo, lipsyncjobs_idx, jobs_idx)
    await ctl.deleted(body)
    ctl.kick(DISPATCH)  # coalesced: one dispatch per turn of the work loop, however many events


@kopf.on.event(*CR)
async def lipsyncjob_event(event: kopf.RawEvent, namespace: str, name: str, memo: kopf.Memo,
                           lipsyncjobs_idx: kopf.Index, jobs_idx: kopf.Index, **_: Any) -> None:
    """Every LipSyncJob event queues a reconcile (even one whose kopf handling fails, e.g. a 409
    on kopf's own patch); kopf runs this before its finalizer and change handlers."""
    ctl = _ctl(memo, lipsyncjobs_idx, jobs_idx)
    if event.get("type") == "DELETED":
        ctl.gone((namespace, name))  # its Job is deleted by the reconcile this queues
    ctl.kick((namespace, name))
    ctl.kick(DISPATCH)


# ---------------------------------------------------------------------------- Jobs
@kopf.on.event("batch", "v1", "jobs", labels=OURS)
async def job_changed(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, lipsyncjobs_idx: kopf.Index,
                      jobs_idx: kopf.Index, **_: Any) -> None:
    ctl = _ctl(memo, lipsyncjobs_idx, jobs_idx)
    await ctl.job_event(body)
    ctl.kick(DISPATCH)  # coalesced: one dispatch per turn of the work loop, however many events
