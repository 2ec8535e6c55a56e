"""status.py: Job/pod state → LipSyncJob status and kstatus conditions (pure)."""

from __future__ import annotations

import json

from lipsync.errors import REASONS
from lipsync_operator import status as S

NOW = "2026-11-25T10:00:00Z"
LATER = "2026-11-25T10:05:00Z"


def job(active=0, ready=0, conditions=(), suspend=False, **extra):
    return {"metadata": {"name": "lipsync-a-1234"}, "spec": {"suspend": suspend},
            "status": {"active": active, "ready": ready, "conditions": list(conditions), **extra}}


def pod(phase="Running", *, running=False, exit_code=None, message="", reason=None, disrupted=False, name="p"):
    state = {}
    if running:
        state = {"running": {"startedAt": NOW}}
    if exit_code is not None:
        state = {"terminated": {"exitCode": exit_code, "message": message, "reason": reason or "Error"}}
    st = {"phase": phase, "containerStatuses": [{"name": "runner", "state": state}]}
    if disrupted:
        st["conditions"] = [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}]
    return {"metadata": {"name": name}, "status": st}


def cond_map(st):
    return {c["type"]: c["status"] for c in st["conditions"]}


def result(phase="Succeeded", reason=None, message="ok"):
    return json.dumps({"phase": phase, "reason": reason, "message": message,
                       "artifacts": {"video": "s3://b/o/output.mp4", "preview": "s3://b/o/preview.jpg",
                                     "metrics": "s3://b/o/metrics.json", "log": "s3://b/o/run.log"}})


def test_pending_running_succeeded_with_kstatus_conditions():
    st = S.from_job({}, job(), [], generation=1, now=NOW)
    assert st["phase"] == "Pending" and cond_map(st) == {"Ready": "False", "Reconciling": "True", "Stalled": "False"}
    st = S.from_job(st, job(active=1, ready=1), [pod(running=True)], generation=1, now=NOW)
    assert st["phase"] == "Running" and st["startedAt"] == NOW and st["progress"] == 0
    st = S.with_progress(st, 42, "infer")
    assert (st["progress"], st["stage"]) == (42, "infer")
    done = job(conditions=[{"type": "Complete", "status": "True"}], completionTime=LATER)
    st = S.from_job(st, done, [pod("Succeeded", exit_code=0, message=result())], generation=1, now=LATER)
    assert st["phase"] == "Succeeded" and st["progress"] == 100 and st["finishedAt"] == LATER
    assert st["artifacts"]["video"] == "s3://b/o/output.mp4"
    assert cond_map(st) == {"Ready": "True", "Reconciling": "False", "Stalled": "False"}
    assert st["observedGeneration"] == 1 and all(c["observedGeneration"] == 1 for c in st["conditions"])


def test_terminal_phase_is_never_left():
    failed = S.invalid({}, "spec.video: empty", 1, NOW)
    assert S.from_job(failed, job(active=1, ready=1), [], generation=1, now=LATER) == failed
    assert S.with_progress(failed, 50, "x") == failed


def test_transition_time_kept_while_status_holds():
    a = S.from_job({}, job(), [], generation=1, now=NOW)
    b = S.from_job(a, job(active=1, ready=1), [pod(running=True)], generation=1, now=LATER)
    times = {c["type"]: c["lastTransitionTime"] for c in b["conditions"]}
    assert times == {"Ready": NOW, "Reconciling": NOW, "Stalled": NOW}  # statuses unchanged
    c = S.from_job(b, job(conditions=[{"type": "Complete", "status": "True"}]), [], generation=1, now=LATER)
    assert {x["type"]: x["lastTransitionTime"] for x in c["conditions"]}["Ready"] == LATER


def test_failure_reason_prefers_the_result_file_then_exit_code():
    failed = job(conditions=[{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}])
    code = REASONS["OutputExists"].exit_code
    st = S.from_job({}, failed, [pod("Failed", exit_code=code, message=result("Failed", "OutputExists", "taken"))],
                    generation=1, now=NOW)
    assert (st["phase"], st["reason"], st["message"]) == ("Failed", "OutputExists", "taken")
    assert cond_map(st) == {"Ready": "False", "Reconciling": "False", "Stalled": "True"}
    stalled = next(c for c in st["conditions"] if c["type"] == "Stalled")
    assert stalled["reason"] == "OutputExists"
    st = S.from_job({}, failed, [pod("Failed", exit_code=REASONS["NoAudioStream"].exit_code, message="log tail")],
                    generation=1, now=NOW)
    assert st["reason"] == "NoAudioStream"


def test_failure_reason_from_oom_and_job_conditions():
    backoff = job(conditions=[{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}])
    st = S.from_job({}, backoff, [pod("Failed", exit_code=137, reason="OOMKilled")], generation=1, now=NOW)
    assert st["reason"] == "OOMKilled"
    st = S.from_job({}, backoff, [pod("Failed", exit_code=75, message=result("Failed", "StorageUnavailable", "S3 503"))],
                    generation=1, now=NOW)
    assert st["reason"] == "StorageUnavailable"
    deadline = job(conditions=[{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                                "message": "Job was active longer than specified deadline"}])
    st = S.from_job({}, deadline, [], generation=1, now=NOW)
    assert st["reason"] == "DeadlineExceeded" and "activeDeadlineSeconds" in st["message"]


def test_disrupted_pod_means_retry_not_failure():
    st = S.from_job({"phase": "Running", "startedAt": NOW}, job(active=1, ready=0),
                    [pod("Failed", exit_code=143, disrupted=True)], generation=1, now=LATER)
    # Phases never go backwards: a render that ran stays Running while its pod is retried.
    assert st["phase"] == "Running" and "retrying" in st["message"] and "PreemptionByScheduler" in st["message"]
    assert st["startedAt"] == NOW
    fresh = S.from_job({"phase": "Pending"}, job(active=1, ready=0),
                       [pod("Failed", exit_code=143, disrupted=True)], generation=1, now=LATER)
    assert fresh["phase"] == "Pending"  # never ran: still waiting for its pod


def test_phases_never_go_backwards():
    assert S.build({"phase": "Running"}, phase="Queued", generation=1, now=NOW)["phase"] == "Running"
    assert S.build({"phase": "Succeeded"}, phase="Failed", generation=1, now=NOW)["phase"] == "Succeeded"
    assert S.build({"phase": "Queued"}, phase="Pending", generation=1, now=NOW)["phase"] == "Pending"


def test_from_job_records_the_job_and_the_spec_it_renders():
    j = job(active=1, ready=0)
    j["specDigest"] = "abc"
    st = S.from_job({}, j, [], generation=1, now=NOW, job_name="lipsync-x-1")
    assert st["jobName"] == "lipsync-x-1" and st["specDigest"] == "abc"


def _cond(st, t):
    return next((c["status"], c["reason"]) for c in st["conditions"] if c["type"] == t)


def test_observe_refused_spec_is_stalled_whatever_the_phase_and_reverts():
    for phase in ("Running", "Succeeded", "Failed"):
        base = S.build({}, phase=phase, generation=1, now=NOW, message="rendering in Job j",
                       reason="NoFaceFound" if phase == "Failed" else None)
        st = S.observe(base, generation=2, spec_refused=True, now=LATER)
        assert st["observedGeneration"] == 2 and st["phase"] == phase
        assert [_cond(st, t) for t in ("Ready", "Reconciling", "Stalled")] == [
            ("False", "SpecImmutable"), ("False", "SpecImmutable"), ("True", "SpecImmutable")]
        assert st["message"].startswith(S.IMMUTABLE_MESSAGE) and "rendering in Job j" in st["message"]
        assert S.refused(st)
        again = S.observe(st, generation=2, spec_refused=True, now=LATER)
        assert again == st  # idempotent: no second write
        back = S.observe(st, generation=3, spec_refused=False, now=LATER)
        assert back["message"] == "rendering in Job j" and not S.refused(back)
        assert back["observedGeneration"] == 3
        assert _cond(back, "Ready")[0] == ("True" if phase == "Succeeded" else "False")
        assert all(c["observedGeneration"] == 3 for c in back["conditions"])


def test_suspended_job_is_queued_for_kueue():
    st = S.from_job({}, job(suspend=True), [], generation=1, now=NOW)
    assert st["phase"] == "Queued" and st["reason"] == "WaitingForKueue"
    assert cond_map(st)["Reconciling"] == "True"


def test_parse_result_ignores_log_tails():
    assert S.parse_result(result())["phase"] == "Succeeded"
    assert S.parse_result("Traceback (most recent call last): ...") is None
    assert S.parse_result('{"not": "a result"}') is None
    assert S.parse_result(None) is None


def test_last_progress_line():
    log = "\n".join([
        '{"event": "progress", "stage": "decode", "progress": 5}',
        '{"event": "log", "message": "progress is fine"}',
        '{"event": "progress", "stage": "infer", "progress": 42.6}',
        "{broken json",
        "plain text",
    ])
    assert S.last_progress(log) == (43, "infer")
    assert S.last_progress("") is None
    assert S.last_progress('{"event": "progress", "progress": 250}') == (100, None)


def test_progress_never_goes_backwards_and_stops_at_99_while_running():
    st = {"phase": "Running", "progress": 50}
    assert S.with_progress(st, 40, None)["progress"] == 50
    assert S.with_progress(st, 100, "encode")["progress"] == 99
    assert S.with_progress({"phase": "Pending"}, 30, "x") == {"phase": "Pending"}


def test_merge_patch():
    assert S.merge_patch({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}) == {"b": 3, "c": 4}
    assert S.merge_patch({"a": 1, "reason": "x"}, {"a": 1}) == {"reason": None}
    assert S.merge_patch({"a": 1}, {"a": 1}) == {}


def test_status_matches_the_schema():
    from lipsync.spec import LipSyncJobStatus

    st = S.from_job({}, job(conditions=[{"type": "Complete", "status": "True"}]),
                    [pod("Succeeded", exit_code=0, message=result())], generation=3, now=NOW)
    LipSyncJobStatus.model_validate(st)
    LipSyncJobStatus.model_validate(S.invalid({}, "spec.x: bad", 1, NOW))
    LipSyncJobStatus.model_validate(S.queued({}, generation=1, now=NOW, budget=2))


def test_kueue_status_names_the_jobs_queue():
    from lipsync_operator import status as st

    job = {"metadata": {"name": "lipsync-a-1", "labels": {"kueue.x-k8s.io/queue-name": "gpu-a100"}},
           "spec": {"suspend": True}, "status": {}}
    out = st.from_job(None, job, [], generation=1, now="2026-11-25T10:00:00Z")
    assert out["phase"] == "Queued" and "gpu-a100" in out["message"]


def test_a_log_tail_termination_message_loses_program_output_and_credentials():
    """FallbackToLogsOnError: the runner died before writing its result; its log's tail becomes the
    message. A model program's quoted output stays out, and credential shapes are redacted."""
    tail = "\n".join([
        json.dumps({"level": "error", "msg": "the model program's last output:\nsnooped SECRET_KEY=abc123def",
                    "event": "model-output-tail"}),
        json.dumps({"level": "info", "msg": "fetch: s3://media/in/face.mp4", "event": "fetch"}),
        "Traceback (most recent call last): MemoryError aws_secret_access_key=wJalrXUtnFEMIK7MDENG",
    ])
    failed = S.from_job(None, job(conditions=[{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]),
                        [pod("Failed", exit_code=1, message=tail, reason="Error")], generation=1, now="t")
    assert failed["phase"] == "Failed"
    assert "snooped" not in json.dumps(failed) and "abc123def" not in json.dumps(failed)
    assert "wJalrXUtnFEMIK7MDENG" not in json.dumps(failed)
    assert "MemoryError" in failed["message"]
