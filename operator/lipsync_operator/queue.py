"""The GPU budget: at most N GPU Jobs exist unfinished at once; the rest wait, oldest first.

The state is derived from the cluster, never stored: kopf's indexes of LipSyncJobs and of the
operator's Jobs are filled from their initial listing before any handler runs, so an operator
that restarts sees every Job that already counts against the budget and every LipSyncJob still
waiting. On top of the indexes the operator keeps one in-memory fact: the Jobs it created whose
watch event has not arrived yet (``Dispatcher.started``), so two admissions in a row cannot both
take the last slot.

* counts against the budget: a LipSyncJob with a GPU Job that exists and is not finished;
* waits: a valid, GPU-needing LipSyncJob with no Job, not finished, not being deleted, and whose
  status does not say a Job was already created for it (``status.jobName``: one Job, ever);
* order: ``creationTimestamp``, then namespace/name;
* non-GPU jobs (``baseline``) never wait; with Kueue (``LIPSYNC_KUEUE_QUEUE``) nothing waits here:
  Jobs are created suspended and Kueue admits them.

``plan`` is the pure decision; ``Dispatcher`` holds the lock and the in-flight set.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, Iterable

Key = tuple[str, str]  # (namespace, name) of a LipSyncJob


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A LipSyncJob that may need a Job, as seen in the LipSyncJob index."""

    namespace: str
    name: str
    uid: str
    created: str  # creationTimestamp (RFC 3339 sorts as text)
    gpu: bool
    valid: bool = True
    error: str | None = None  # why the spec is invalid
    digest: str | None = None  # jobs.spec_digest of the (valid) spec
    finished: bool = False  # phase Succeeded/Failed
    deleting: bool = False
    # Every field takes part in ==: kopf replaces an index value only when the new one differs.
    phase: str | None = None
    generation: int | None = None
    job: Any = dataclasses.field(default=None, hash=False, repr=False)  # the parsed LipSyncJob
    started: bool = False  # its status says a Job was created: never start another
    status: Any = dataclasses.field(default=None, hash=False, repr=False)  # its .status as last seen

    @property
    def key(self) -> Key:
        return self.namespace, self.name

    @property
    def order(self) -> tuple[str, str, str]:
        return self.created, self.namespace, self.name


@dataclasses.dataclass(frozen=True)
class JobFact:
    """An operator-made Job, as seen in the Job index."""

    namespace: str
    name: str
    owner: str  # the LipSyncJob's name
    uid: str    # the LipSyncJob's uid
    gpu: bool
    finished: bool
    # What the status is computed from: name, labels, spec.suspend, status (jobs.job_facts_body).
    body: Any = dataclasses.field(default=None, hash=False, repr=False)

    @property
    def key(self) -> Key:
        return self.namespace, self.owner


@dataclasses.dataclass(frozen=True)
class Plan:
    start: list[Candidate]   # create their Jobs now, in this order
    wait: list[Candidate]    # Queued, oldest first
    running: int             # GPU Jobs counting against the budget (before `start`)


def plan(candidates: Iterable[Candidate], jobs: Iterable[JobFact], *, budget: int,
         in_flight: Iterable[Candidate] = (), kueue: bool = False) -> Plan:
    """Which LipSyncJobs to start now and which wait.

    ``in_flight``: candidates whose Job this process created but has not yet seen in ``jobs``.
    """
    jobs = list(jobs)
    has_job = {j.key for j in jobs}
    flying = [c for c in in_flight if c.key not in has_job]
    has_job |= {c.key for c in flying}
    running = len({j.key for j in jobs if j.gpu and not j.finished} | {c.key for c in flying if c.gpu})

    pending = sorted(
        (c for c in candidates
         if c.valid and not c.finished and not c.deleting and not c.started and c.key not in has_job),
        key=lambda c: c.order,
    )
    if kueue:
        return Plan(start=pending, wait=[], running=running)
    start = [c for c in pending if not c.gpu]
    gpu = [c for c in pending if c.gpu]
    free = max(0, budget - running)
    return Plan(start=start + gpu[:free], wait=gpu[free:], running=running)


class Dispatcher:
    """Serializes admissions and remembers the Jobs created but not yet seen in the index."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.started: dict[Key, Candidate] = {}

    def seen(self, jobs: Iterable[JobFact]) -> None:
        """Forget in-flight entries the index now shows (it is the authority from then on)."""
        for j in jobs:
            self.started.pop(j.key, None)

    def forget(self, key: Key) -> None:
        self.started.pop(key, None)
