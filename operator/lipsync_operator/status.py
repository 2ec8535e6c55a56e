"""Job and pod state → LipSyncJob status. Pure functions, no I/O.

Phases: ``Pending`` (accepted; the Job's pod is not running yet) → ``Queued`` (waiting for a GPU
slot of the operator's budget, or for Kueue to admit the suspended Job) → ``Running`` →
``Succeeded`` | ``Failed``. A terminal phase is never left.

Conditions follow kstatus (what ``kubectl wait``, Argo CD and Flux read):

=========== ============ ============ ==========================
phase       Ready        Reconciling  Stalled
=========== ============ ============ ==========================
in progress False        True         False
Succeeded   True         False        False
Failed      False        False        True (reason = the cause)
=========== ============ ============ ==========================

Why a run failed comes, in order of preference, from the runner's result JSON (the container's
termination message, written to ``$LIPSYNC_RESULT_FILE=/dev/termination-log``), from its exit
code (``lipsync.errors.reason_for_exit_code``), from the container's termination reason
(``OOMKilled``), and last from the Job's own condition (``DeadlineExceeded``,
``BackoffLimitExceeded``).
"""

from __future__ import annotations

import datetime
import json
from typing import Any, Iterable, Mapping

from lipsync.errors import PERMANENT_EXIT_CODES, REASONS, reason_for_exit_code
from lipsync.redact import redact

from .jobs import CONTAINER, KUEUE_QUEUE_LABEL, index_of

TERMINAL = frozenset({"Succeeded", "Failed"})
IN_PROGRESS = frozenset({"Pending", "Queued", "Running"})
BEFORE_RUNNING = frozenset({"Pending", "Queued"})
IMMUTABLE_MESSAGE = "spec is immutable once rendering started: delete and re-apply"


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------------------- pod & Job facts
def _cond(obj: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return c
    return None


def _runner_state(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == CONTAINER:
            return cs.get("state") or {}
    return {}


def parse_result(message: str | None) -> dict[str, Any] | None:
    """The runner's result JSON from a termination message, or None if it is not one.

    With ``FallbackToLogsOnError`` a crashed runner's message is its log tail instead.
    """
    if not message:
        return None
    try:
        doc = json.loads(message.strip())
    except ValueError:
        return None
    if isinstance(doc, dict) and doc.get("phase") in ("Succeeded", "Failed"):
        return doc
    return None


def _without_program_output(log_tail: str) -> str:
    """A termination message that is the log's tail (FallbackToLogsOnError: the runner died before
    writing its result), less the lines quoting a model program's output: they stay in the log."""
    return "\n".join(line for line in log_tail.splitlines() if '"model-output' not in line)


def pod_outcome(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """What a finished pod says: exit code, result JSON, reason; None while it has not ended."""
    term = _runner_state(pod).get("terminated")
    status = pod.get("status") or {}
    disrupted = _cond(pod, "DisruptionTarget")
    if term is None and status.get("phase") not in ("Failed", "Succeeded"):
        return None
    term = term or {}
    code = term.get("exitCode")
    result = parse_result(term.get("message"))
    reason = (result or {}).get("reason")
    if not reason and code:
        reason = reason_for_exit_code(code)
        if term.get("reason") == "OOMKilled" or reason is None:
            reason = term.get("reason") if term.get("reason") not in (None, "Error", "Completed") else reason
    if disrupted and not reason:
        reason = disrupted.get("reason") or "Disrupted"
    if not reason and status.get("reason"):  # "Evicted", "DeadlineExceeded" at pod level
        reason = status["reason"]
    fallback = "" if result else _without_program_output(term.get("message") or "")
    message = (result or {}).get("message") or status.get("message") or fallback or ""
    return {
        "exitCode": code,
        "result": result,
        "reason": reason,
        "message": message.strip()[-1000:],
        "disrupted": disrupted is not None,
        "finishedAt": term.get("finishedAt"),
        "succeeded": status.get("phase") == "Succeeded" or code == 0,
    }


def running_since(pods: Iterable[Mapping[str, Any]]) -> str | None:
    """When the runner container of the newest running pod started, if one runs."""
    started = None
    for pod in pods:
        running = _runner_state(pod).get("running")
        if running:
            started = running.get("startedAt") or started
    return started


def running_pod(pods: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The pod whose runner container is running now (the newest), if any."""
    found = None
    for pod in pods:
        if (pod.get("status") or {}).get("phase") == "Running" or _runner_state(pod).get("running"):
            found = pod
    return found


def job_finished(job: Mapping[str, Any]) -> str | None:
    """``Succeeded`` / ``Failed`` once the Job controller says so, else None."""
    if _cond(job, "Complete"):
        return "Succeeded"
    if _cond(job, "Failed"):
        return "Failed"
    return None


def last_progress(log: str) -> tuple[int, str | None] | None:
    """The last ``{"event": "progress", ...}`` line of a runner's JSON log: (percent, stage)."""
    for line in reversed(log.splitlines()):
        line = line.strip()
        if not line.startswith("{") or '"progress"' not in line:
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("event") == "progress":
            try:
                pct = int(round(float(doc.get("progress", 0))))
            except (TypeError, ValueError):
                continue
            stage = doc.get("stage")
            return max(0, min(100, pct)), str(stage) if stage is not None else None
    return None


# ---------------------------------------------------------------------------- status
def conditions(phase: str, reason: str | None, message: str | None, generation: int | None,
               previous: Iterable[Mapping[str, Any]] | None, now: str) -> list[dict[str, Any]]:
    """kstatus conditions for a phase; lastTransitionTime kept while a condition's status holds."""
    done_ok = phase == "Succeeded"
    failed = phase == "Failed"
    want = [
        ("Ready", done_ok, "Succeeded" if done_ok else (reason or phase) if failed else phase,
         "the render finished and its artifacts are published" if done_ok else message),
        ("Reconciling", not (done_ok or failed), phase, message if not (done_ok or failed) else None),
        ("Stalled", failed, reason or "Failed" if failed else phase, message if failed else None),
    ]
    return _conditions(want, generation, previous, now)


def _conditions(want: list[tuple[str, bool, str, str | None]], generation: int | None,
                previous: Iterable[Mapping[str, Any]] | None, now: str) -> list[dict[str, Any]]:
    prev = {c.get("type"): c for c in previous or []}
    out = []
    for type_, on, why, text in want:
        status = "True" if on else "False"
        old = prev.get(type_) or {}
        since = old.get("lastTransitionTime") if old.get("status") == status and old.get("lastTransitionTime") else now
        cond: dict[str, Any] = {"type": type_, "status": status, "reason": why, "lastTransitionTime": since}
        if text:
            cond["message"] = text
        if generation is not None:
            cond["observedGeneration"] = generation
        out.append(cond)
    return out


def build(current: Mapping[str, Any] | None, *, phase: str, generation: int | None, now: str,
          reason: str | None = None, message: str | None = None, **fields: Any) -> dict[str, Any]:
    """The full new status: ``current`` with ``fields`` applied, phase, reason, message, conditions.

    Phases never go backwards: if ``current`` is terminal it is returned unchanged, and a Running
    status asked to become Pending or Queued (a pod retried after an eviction) stays Running.
    The message is redacted (``lipsync.redact``): status and Events are read by the whole namespace.
    """
    if message:
        message = redact(message, ())
    current = dict(current or {})
    if current.get("phase") in TERMINAL:
        return current
    if current.get("phase") == "Running" and phase in BEFORE_RUNNING:
        phase = "Running"  # between attempts (a retried pod): the render is under way, not back in line
    new = dict(current)
    new.update({k: v for k, v in fields.items()})
    new["phase"] = phase
    new["reason"] = reason
    new["message"] = message
    if generation is not None:
        new["observedGeneration"] = generation
    new["conditions"] = conditions(phase, reason, message, generation, current.get("conditions"), now)
    return {k: v for k, v in new.items() if v is not None}


def invalid(current: Mapping[str, Any] | None, message: str, generation: int | None, now: str,
            reason: str = "InvalidSpec") -> dict[str, Any]:
    """A refused spec (InvalidSpec, or NotAllowed by the cluster policy): Failed/Stalled, never a Job."""
    return build(current, phase="Failed", reason=reason, message=message, generation=generation,
                 now=now, finishedAt=now, progress=0)


def queued(current: Mapping[str, Any] | None, *, generation: int | None, now: str, budget: int | None = None,
           kueue: str | None = None) -> dict[str, Any]:
    if kueue:
        message = f"waiting for Kueue to admit the Job (queue {kueue})"
        reason = "WaitingForKueue"
    else:
        message = (f"waiting for a GPU: at most {budget} GPU jobs run at once, shared between namespaces "
                   "in turn, oldest first within one")
        reason = "WaitingForGPU"
    return build(current, phase="Queued", reason=reason, message=message, generation=generation, now=now,
                 progress=(current or {}).get("progress") or 0)


def from_job(current: Mapping[str, Any] | None, job: Mapping[str, Any], pods: list[Mapping[str, Any]], *,
             generation: int | None, now: str, job_name: str | None = None, name_field: str = "jobName",
             prefix: str = "") -> dict[str, Any]:
    """The status a LipSyncJob has given its Job and the Job's pods (oldest first).

    ``name_field``: the status field that records the Job's name (``stitchJobName`` for the
    stitch step); ``prefix``: put before a failure's message and a retry note (which index).
    """
    current = dict(current or {})
    jstatus = job.get("status") or {}
    name = job_name or (job.get("metadata") or {}).get("name")
    if name and current.get("phase") not in TERMINAL:
        current[name_field] = name  # a Job was created: never another (see controller.reconcile)
        if job.get("specDigest"):
            current["specDigest"] = job["specDigest"]  # the spec it renders
    outcomes = [o for o in (pod_outcome(p) for p in pods) if o is not None]
    finished = job_finished(job)

    if finished == "Succeeded":
        last = next((o for o in reversed(outcomes) if o["succeeded"]), None)
        result = (last or {}).get("result") or {}
        artifacts = result.get("artifacts") or current.get("artifacts")
        return build(
            current, phase="Succeeded", generation=generation, now=now,
            reason=None, message=result.get("message") or f"rendered by Job {name}",
            progress=100, stage="done", artifacts=artifacts,
            startedAt=current.get("startedAt") or jstatus.get("startTime") or now,
            finishedAt=jstatus.get("completionTime") or now,
        )

    if finished == "Failed":
        cond = _cond(job, "Failed") or {}
        last = outcomes[-1] if outcomes else None
        reason = (last or {}).get("reason") or cond.get("reason") or "Failed"
        if reason == "Evicted" or (last or {}).get("disrupted"):
            reason = cond.get("reason") or reason  # disruptions do not fail a Job by themselves
        detail = (last or {}).get("message") or cond.get("message") or ""
        summary = REASONS[reason].summary if reason in REASONS else None
        message = prefix + (detail or summary or f"Job {name} failed")
        if cond.get("reason") == "DeadlineExceeded":
            message = f"the Job ran past activeDeadlineSeconds: {cond.get('message') or detail}".rstrip(": ")
            reason = "DeadlineExceeded"
        result = (last or {}).get("result") or {}
        return build(
            current, phase="Failed", reason=reason, message=message, generation=generation, now=now,
            artifacts=result.get("artifacts") or current.get("artifacts"),
            startedAt=current.get("startedAt") or jstatus.get("startTime"),
            finishedAt=cond.get("lastTransitionTime") or now,
        )

    if (job.get("spec") or {}).get("suspend"):
        labels = (job.get("metadata") or {}).get("labels") or {}
        return queued(current, generation=generation, now=now, kueue=labels.get(KUEUE_QUEUE_LABEL, "kueue"))

    active = int(jstatus.get("active") or 0)
    ready = int(jstatus.get("ready") or 0)
    started = running_since(pods)
    retries = [o for o in outcomes if not o["succeeded"]]
    note = None
    if retries:
        why = retries[-1]["reason"] or f"exit code {retries[-1]['exitCode']}"
        note = f"{prefix}attempt {len(retries) + 1}: the previous pod ended ({why}); retrying"

    if active and (ready or started):
        stage = current.get("stage") if current.get("phase") == "Running" else "starting"
        return build(
            current, phase="Running", reason=None, message=note or f"rendering in Job {name}",
            generation=generation, now=now, stage=stage, progress=current.get("progress") or 0,
            startedAt=current.get("startedAt") or started or now,
        )
    # Created, or between attempts: the pod is not running (scheduling, pulling, retrying).
    return build(
        current, phase="Pending", reason=None,
        message=note or f"Job {name} created; waiting for its pod to start",
        generation=generation, now=now, progress=current.get("progress") or 0,
    )


def published(current: Mapping[str, Any] | None, found: Mapping[str, Any], *, generation: int | None,
              now: str, job_name: str) -> dict[str, Any]:
    """Succeeded from a published ``metrics.json`` (its Job gone before its outcome was seen)."""
    current = dict(current or {})
    artifacts = found.get("artifacts") if isinstance(found.get("artifacts"), dict) else None
    return build(
        current, phase="Succeeded", generation=generation, now=now, reason=None,
        message=f"rendered by Job {job_name} (the Job is gone; its published metrics.json says so)",
        progress=100, stage="done", artifacts=artifacts or current.get("artifacts"), jobName=job_name,
        startedAt=current.get("startedAt") or now, finishedAt=now,
    )


def with_progress(current: Mapping[str, Any] | None, progress: int, stage: str | None) -> dict[str, Any]:
    """``current`` with a new progress/stage, if it is Running; progress never goes backwards."""
    current = dict(current or {})
    if current.get("phase") != "Running":
        return current
    new = dict(current)
    new["progress"] = max(int(current.get("progress") or 0), min(99, progress))
    if stage:
        new["stage"] = stage
    return new


_REFUSED_DETAIL = " (the status describes the spec being rendered: "


def base_message(message: str | None) -> str | None:
    """A status message without the refusal note :func:`observe` puts in front of it."""
    if not message or not message.startswith(IMMUTABLE_MESSAGE):
        return message
    rest = message[len(IMMUTABLE_MESSAGE):]
    if rest.startswith(_REFUSED_DETAIL) and rest.endswith(")"):
        return rest[len(_REFUSED_DETAIL):-1] or None
    return None if not rest else message


def refused(st: Mapping[str, Any] | None) -> bool:
    """Whether a status carries a spec refusal (Stalled=True, reason SpecImmutable)."""
    return any(c.get("type") == "Stalled" and c.get("status") == "True" and c.get("reason") == "SpecImmutable"
               for c in (st or {}).get("conditions") or [])


def observe(new: Mapping[str, Any], *, generation: int | None, spec_refused: bool, now: str) -> dict[str, Any]:
    """kstatus for the generation the operator has now seen: ``observedGeneration`` = ``generation``.

    ``spec_refused``: that generation's spec differs from the spec its Job renders (an edit made
    once the Job existed). Then whatever the phase (the earlier render goes on, or has ended),
    ``Stalled=True``, ``Ready=False`` and ``Reconciling=False``, all with reason ``SpecImmutable``,
    and the message says so first: ``kubectl wait --for=condition=Ready``, Argo CD (Degraded) and
    Flux (failed) all see the refusal, never a Ready for a spec that was not rendered. When the
    spec is reverted, the conditions are those of the phase again.
    """
    st = dict(new)
    if not st.get("phase"):
        return st
    base = base_message(st.get("message"))
    if spec_refused:
        text = IMMUTABLE_MESSAGE + (f"{_REFUSED_DETAIL}{base})" if base else "")
        st["message"] = text
        st["conditions"] = _conditions([
            ("Ready", False, "SpecImmutable", text),
            ("Reconciling", False, "SpecImmutable", None),
            ("Stalled", True, "SpecImmutable", text),
        ], generation, st.get("conditions"), now)
    else:
        if base:
            st["message"] = base
        else:
            st.pop("message", None)
        st["conditions"] = conditions(st["phase"], st.get("reason"), base, generation, st.get("conditions"), now)
    if generation is not None:
        st["observedGeneration"] = generation
    return st


def merge_patch(current: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch (top-level keys of ``.status``) from current to desired; {} if equal."""
    current = current or {}
    patch: dict[str, Any] = {k: v for k, v in desired.items() if current.get(k) != v}
    patch.update({k: None for k in current if k not in desired})
    return patch


# ---------------------------------------------------------------------------- spec.parallelism > 1
def completed_indexes(text: str | None) -> set[int]:
    """An Indexed Job's ``status.completedIndexes`` (``"0,2-4"``) as a set of indices."""
    out: set[int] = set()
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            out.update(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            continue
    return out


def indices_done(job: Mapping[str, Any], pods: Iterable[Mapping[str, Any]], total: int) -> set[int]:
    """The indices that have rendered their share: the Job's ``completedIndexes``, and the
    succeeded pods' indices (the Job controller may not have counted them yet)."""
    done = completed_indexes((job.get("status") or {}).get("completedIndexes"))
    for pod in pods:
        out = pod_outcome(pod)
        k = index_of(pod)  # type: ignore[arg-type]
        if out is not None and out["succeeded"] and k is not None:
            done.add(k)
    return {k for k in done if 0 <= k < total}


def _failed_index(pods: list[Mapping[str, Any]]) -> int | None:
    """Which pod's failure failed an Indexed Job: a permanent exit code first, else the last
    failure that was not a disruption; its position in ``pods``."""
    failures = [(i, o) for i, o in ((i, pod_outcome(p)) for i, p in enumerate(pods))
                if o is not None and not o["succeeded"]]
    for i, o in reversed(failures):
        if o["exitCode"] in PERMANENT_EXIT_CODES and not o["disrupted"]:
            return i
    for i, o in reversed(failures):
        if not o["disrupted"]:
            return i
    return failures[-1][0] if failures else None


def from_indexed(current: Mapping[str, Any] | None, render: Mapping[str, Any], render_pods: list[Mapping[str, Any]],
                 *, total: int, generation: int | None, now: str, render_name: str,
                 stitch: Mapping[str, Any] | None = None, stitch_pods: list[Mapping[str, Any]] | None = None,
                 stitch_name: str | None = None) -> dict[str, Any]:
    """The status of a render split over ``total`` pods (an Indexed Job), then its stitch Job.

    ``status.indices`` is ``{done, total}``. While the render Job runs, the status is
    :func:`from_job`'s with the index in messages; one index failed for good fails the
    LipSyncJob with that index's reason (a permanent exit code is preferred over an ordinary
    failure, never a disruption). Once the render Job is Complete, the stitch Job decides.
    """
    current = dict(current or {})
    if current.get("phase") not in TERMINAL:
        current["jobName"] = render_name
    if stitch is not None:
        if current.get("phase") not in TERMINAL:
            current["indices"] = {"done": total, "total": total}
            current["stage"] = "stitch"
        st = from_job(current, stitch, stitch_pods or [], generation=generation, now=now, job_name=stitch_name,
                      name_field="stitchJobName", prefix="stitch step: ")
        if st.get("phase") == "Running" and not (st.get("message") or "").startswith("stitch step: "):
            st = build(st, phase="Running", generation=generation, now=now, stage="stitch",
                       message=f"all {total} indices rendered; joining their chunks in Job {stitch_name}",
                       startedAt=st.get("startedAt") or now)
        return st

    done = indices_done(render, render_pods, total)
    if current.get("phase") not in TERMINAL:
        current["indices"] = {"done": len(done), "total": total}
    finished = job_finished(render)
    if finished == "Succeeded":  # every index rendered: the stitch Job comes next
        return build(current, phase="Running", generation=generation, now=now,
                     message=f"all {total} indices rendered; creating the stitch Job",
                     indices={"done": total, "total": total}, stage="stitch",
                     startedAt=current.get("startedAt") or (render.get("status") or {}).get("startTime") or now)
    if finished == "Failed":
        which = _failed_index(list(render_pods))
        pods = list(render_pods)
        prefix = ""
        if which is not None:
            pods.append(pods.pop(which))  # from_job reads the last pod's outcome
            k = index_of(pods[-1])  # type: ignore[arg-type]
            prefix = f"index {k} of {total}: " if k is not None else ""
        return from_job(current, render, pods, generation=generation, now=now, job_name=render_name, prefix=prefix)

    # Running (or between attempts): a retry note names the index, if one is being retried.
    retrying = [p for p in render_pods if (o := pod_outcome(p)) is not None and not o["succeeded"]
                and index_of(p) not in done]  # type: ignore[arg-type]
    if retrying:
        k = index_of(retrying[-1])  # type: ignore[arg-type]
        same = [p for p in render_pods if index_of(p) == k]  # type: ignore[arg-type]
        return from_job(current, render, same, generation=generation, now=now, job_name=render_name,
                        prefix=f"index {k} of {total}: " if k is not None else "")
    st = from_job(current, render, render_pods, generation=generation, now=now, job_name=render_name)
    if st.get("phase") == "Running":
        st = build(st, phase="Running", generation=generation, now=now, stage=st.get("stage"),
                   message=f"rendering in Indexed Job {render_name}: {len(done)} of {total} indices done")
    return st


def aggregate_progress(total: int, done: Iterable[int], running: Mapping[int, int]) -> int:
    """Percent of an Indexed render: each done index counts 100, each running one its own percent."""
    done = set(done)
    parts = [100 if k in done else max(0, min(100, running.get(k, 0))) for k in range(total)]
    return int(sum(parts) / max(1, total))
