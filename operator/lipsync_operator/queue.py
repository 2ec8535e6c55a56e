"""The GPU budget: at most N GPU Jobs exist unfinished at once; the rest wait, fairly queued.

The state is derived from the cluster, never stored: kopf's indexes of LipSyncJobs and of the
operator's Jobs are filled from their initial listing before any handler runs, so an operator
that restarts sees every Job that already counts against the budget and every LipSyncJob still
waiting. On top of the indexes the operator keeps one in-memory fact: the Jobs it created whose
watch event has not arrived yet (``Dispatcher.started``), so two admissions in a row cannot both
take the last slot.

* counts against the budget: every GPU pod of an unfinished GPU Job: a render Job of
  ``spec.parallelism`` N takes N slots (its ``spec.parallelism``), a stitch Job with a GPU one,
  and a finished render Job whose stitch takes a GPU keeps one until that stitch Job exists (a
  failed create is retried: the slot is not given away meanwhile);
  a LipSyncJob whose render needs more slots than the whole budget is refused (``NotAllowed``);
* waits: a valid, GPU-needing LipSyncJob with no Job, not finished, not being deleted, and whose
  status does not say a Job was already created for it (``status.jobName``: one Job, ever);
* order: fair between namespaces (the next free slot goes to the namespace with the fewest GPU
  Jobs running, ties to the one whose first waiting job is oldest: round-robin when all are
  backlogged; counted in GPU pods), FIFO within one (``creationTimestamp``, then the operator's first sight of the
  object, then its uid: never its name; see :func:`fair_order`);
* a job needing N slots starts only when N are free; the ones behind it wait too (no job
  overtakes a wider one, which would otherwise starve);
* non-GPU jobs (``baseline``) never wait; with Kueue (``LIPSYNC_KUEUE_QUEUE``) nothing waits here:
  Jobs are created suspended and Kueue admits them.

``plan`` is the pure decision; ``Dispatcher`` holds the lock and the in-flight set.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import heapq
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
    slots: int = 1  # GPU budget slots its render takes (spec.parallelism for a GPU model)
    valid: bool = True
    error: str | None = None  # why the spec is invalid (or refused by the cluster policy)
    error_reason: str | None = None  # InvalidSpec, NotAllowed
    digest: str | None = None  # jobs.spec_digest of the (valid) spec
    finished: bool = False  # phase Succeeded/Failed
    deleting: bool = False
    # Every field takes part in ==: kopf replaces an index value only when the new one differs.
    phase: str | None = None
    generation: int | None = None
    job: Any = dataclasses.field(default=None, hash=False, repr=False)  # the parsed LipSyncJob
    started: bool = False  # its status says a Job was created: never start another
    arrival: str = ""  # when the operator first saw it (RFC 3339, microseconds): the FIFO tie-break
    status: Any = dataclasses.field(default=None, hash=False, repr=False)  # its .status as last seen

    @property
    def key(self) -> Key:
        return self.namespace, self.name

    @property
    def order(self) -> tuple[str, str, str]:
        """FIFO: creationTimestamp (whole seconds on a real API server), then the time the
        operator first saw it (its watch delivers creations in order; kept in an annotation
        across restarts), then the uid. Never the name."""
        return self.created, self.arrival, self.uid


@dataclasses.dataclass(frozen=True)
class JobFact:
    """An operator-made Job, as seen in the Job index."""

    namespace: str
    name: str
    owner: str  # the LipSyncJob's name
    uid: str    # the LipSyncJob's uid
    gpu: bool
    finished: bool
    slots: int = 1  # GPU pods it runs at once (its spec.parallelism) when gpu
    step: str = "render"  # or "stitch" (jobs.STEP_LABEL)
    reserves: int = 0  # GPU slots kept for a Job still to be made: a finished render's GPU stitch
    # What the status is computed from: name, labels, spec.suspend, status (jobs.job_facts_body).
    body: Any = dataclasses.field(default=None, hash=False, repr=False)

    @property
    def key(self) -> Key:
        return self.namespace, self.owner


@dataclasses.dataclass(frozen=True)
class Plan:
    start: list[Candidate]   # create their Jobs now, in this order
    wait: list[Candidate]    # Queued, in the order they would start (fair_order)
    running: int             # GPU pods (slots) counting against the budget (before `start`)


def plan(candidates: Iterable[Candidate], jobs: Iterable[JobFact], *, budget: int,
         in_flight: Iterable[Candidate] = (), kueue: bool = False) -> Plan:
    """Which LipSyncJobs to start now and which wait.

    ``in_flight``: candidates whose Job this process created but has not yet seen in ``jobs``.
    """
    jobs = list(jobs)
    has_job = {j.key for j in jobs}
    flying = [c for c in in_flight if c.key not in has_job]
    has_job |= {c.key for c in flying}
    per_ns: collections.Counter[str] = collections.Counter()
    stitching = {j.uid for j in jobs if j.step == "stitch"}
    for j in jobs:
        if j.gpu and not j.finished:
            per_ns[j.namespace] += max(1, j.slots)
        elif j.reserves and j.uid not in stitching:  # its stitch Job is about to be made (or retried)
            per_ns[j.namespace] += j.reserves
    for c in flying:
        if c.gpu:
            per_ns[c.namespace] += max(1, c.slots)
    running = sum(per_ns.values())

    pending = sorted(
        (c for c in candidates
         if c.valid and not c.finished and not c.deleting and not c.started and c.key not in has_job),
        key=lambda c: c.order,
    )
    if kueue:
        return Plan(start=pending, wait=[], running=running)
    start = [c for c in pending if not c.gpu]
    line = fair_order([c for c in pending if c.gpu], per_ns)
    free = max(0, budget - running)
    n = 0
    while n < len(line) and max(1, line[n].slots) <= free:
        free -= max(1, line[n].slots)
        n += 1
    return Plan(start=start + line[:n], wait=line[n:], running=running)


def fair_order(waiting: list[Candidate], running: collections.Counter[str]) -> list[Candidate]:
    """The order in which waiting GPU jobs get free slots: fair between namespaces, FIFO in each.

    Each next slot goes to the namespace with the fewest GPU Jobs running (counting the slots
    already handed out in this order), ties to the namespace whose first waiting job is oldest
    (:attr:`Candidate.order`); counts are GPU pods (slots). With every namespace backlogged this is round-robin between them;
    one namespace's 150 jobs hold back another namespace's first job for one free slot at most.
    ``waiting`` must be in FIFO order. O(n log k) for n jobs in k namespaces.
    """
    lines: dict[str, collections.deque[Candidate]] = {}
    for c in waiting:
        lines.setdefault(c.namespace, collections.deque()).append(c)
    heap = [(running[ns], line[0].order, ns) for ns, line in lines.items()]
    heapq.heapify(heap)
    out: list[Candidate] = []
    while heap:
        count, _, ns = heapq.heappop(heap)
        line = lines[ns]
        out.append(line.popleft())
        if line:
            heapq.heappush(heap, (count + max(1, out[-1].slots), line[0].order, ns))
    return out


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
