"""The operator for real (kopf + kubernetes client, over HTTP) against an emulated API server (kmock).

The tests play the Job controller and the kubelet: they create pods and write Job and pod status
through the API, as those controllers would. Each test also checks (in the ``cluster`` fixture)
that every request the operator made is allowed by ``permissions.RULES``.
"""

from __future__ import annotations

import json
import time

from kubesim import CRS, JOBS, NS, end_pod, finish_job, lipsyncjob, start_pod

from lipsync.errors import PERMANENT_EXIT_CODES, REASONS
from lipsync_operator.jobs import KUEUE_QUEUE_LABEL, job_name

JOBS_PATH = f"/apis/batch/v1/namespaces/{NS}/jobs"


def status_of(cluster, name):
    return (cluster.get(CRS, NS, name) or {}).get("status") or {}


def wait_status(cluster, name, timeout=15, **want):
    def check():
        st = status_of(cluster, name)
        return st if all(st.get(k) == v for k, v in want.items()) else None
    return cluster.wait(check, timeout=timeout, message=f"{name} status {want}")


def conds(st):
    return {c["type"]: (c["status"], c.get("reason")) for c in st.get("conditions") or []}


def the_job(cluster, cr):
    name = job_name(cr["metadata"]["name"], cr["metadata"]["uid"])
    return cluster.wait(lambda: cluster.get(JOBS, NS, name), message=f"Job {name}")


def unfinished_jobs(cluster):
    done = ("Complete", "Failed")
    return [j for j in cluster.list(JOBS, NS)
            if not any(c["type"] in done and c["status"] == "True" for c in (j.get("status") or {}).get("conditions") or [])]


def result_json(phase="Succeeded", reason=None, message="done", name="x"):
    return json.dumps({"phase": phase, "reason": reason, "message": message, "artifacts": {
        "video": f"s3://media/out/{name}/output.mp4", "preview": f"s3://media/out/{name}/preview.jpg",
        "metrics": f"s3://media/out/{name}/metrics.json", "log": f"s3://media/out/{name}/run.log"}})


# ---------------------------------------------------------------------------- creation
def test_create_makes_one_job_with_gpu_owner_and_name(cluster, run_operator):
    with run_operator():
        cr = cluster.create(CRS, lipsyncjob("talk-1"))
        job = the_job(cluster, cr)
        st = wait_status(cluster, "talk-1", phase="Pending")
        time.sleep(0.5)  # no second Job appears later
        assert len(cluster.list(JOBS, NS)) == 1
    assert job["metadata"]["name"].startswith("lipsync-talk-1-") and len(job["metadata"]["name"]) <= 63
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert container["command"] == ["lipsync", "run", "--job-env", "LIPSYNC_JOB", "--log-format", "json"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert json.loads(env["LIPSYNC_JOB"])["metadata"]["uid"] == cr["metadata"]["uid"]
    assert container["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    ref = job["metadata"]["ownerReferences"][0]
    assert (ref["kind"], ref["name"], ref["uid"]) == ("LipSyncJob", "talk-1", cr["metadata"]["uid"])
    assert ref["controller"] is True and ref["blockOwnerDeletion"] is True
    assert conds(st) == {"Ready": ("False", "Pending"), "Reconciling": ("True", "Pending"),
                         "Stalled": ("False", "Pending")}
    assert st["observedGeneration"] == 1


def test_baseline_gets_no_gpu_and_skips_the_budget(cluster, run_operator):
    with run_operator(LIPSYNC_GPU_BUDGET="1"):
        gpu = cluster.create(CRS, lipsyncjob("gpu-1"))
        the_job(cluster, gpu)
        cpu = [cluster.create(CRS, lipsyncjob(f"cpu-{i}", model={"name": "baseline"})) for i in range(2)]
        jobs = [the_job(cluster, cr) for cr in cpu]
    for job in jobs:
        resources = job["spec"]["template"]["spec"]["containers"][0]["resources"]
        assert "limits" not in resources
        assert job["metadata"]["labels"]["lipsync.dev/gpu"] == "false"


# ---------------------------------------------------------------------------- progress to the end
def test_progress_and_completion_in_order(cluster, run_operator):
    with run_operator():
        cr = cluster.create(CRS, lipsyncjob("talk-2"))
        job = the_job(cluster, cr)
        wait_status(cluster, "talk-2", phase="Pending")
        pod = start_pod(cluster, job)
        st = wait_status(cluster, "talk-2", phase="Running")
        assert conds(st)["Reconciling"][0] == "True" and conds(st)["Ready"][0] == "False"
        assert st["startedAt"]
        cluster.logs[NS, pod["metadata"]["name"]] = "\n".join([
            '{"event": "start", "message": "rendering"}',
            '{"event": "progress", "stage": "detect", "progress": 10}',
            "not json at all",
            '{"event": "progress", "stage": "infer", "progress": 42, "fps": 31.5}',
        ]) + "\n"
        wait_status(cluster, "talk-2", progress=42, stage="infer")
        end_pod(cluster, pod, exit_code=0, message=result_json(name="talk-2"))
        finish_job(cluster, job, ok=True)
        st = wait_status(cluster, "talk-2", phase="Succeeded")
        events = cluster.wait(lambda: [
            (e["type"], e["reason"]) for e in cluster.bodies("POST", f"/api/v1/namespaces/{NS}/events")
            if e["involvedObject"]["name"] == "talk-2"] if len(cluster.bodies(
                "POST", f"/api/v1/namespaces/{NS}/events")) >= 4 else None, message="Events")
    assert events == [("Normal", "JobCreated"), ("Normal", "Pending"), ("Normal", "Running"),
                      ("Normal", "Succeeded")]
    assert st["progress"] == 100
    assert st["artifacts"]["video"] == "s3://media/out/talk-2/output.mp4"
    assert st["finishedAt"] and st["startedAt"] and "reason" not in st
    assert conds(st) == {"Ready": ("True", "Succeeded"), "Reconciling": ("False", "Succeeded"),
                         "Stalled": ("False", "Succeeded")}
    assert cluster.phases(NS, "talk-2") == ["Pending", "Running", "Succeeded"]
    # Progress only went up while running.
    seen = [((v or {}).get("status") or {}).get("progress") for v in cluster.history(CRS, NS, "talk-2")]
    seen = [p for p in seen if p is not None]
    assert seen == sorted(seen) and 42 in seen


# ---------------------------------------------------------------------------- the GPU budget
def test_budget_runs_n_queues_the_rest_oldest_first(cluster, run_operator):
    n = 2
    with run_operator(LIPSYNC_GPU_BUDGET=str(n)):
        crs = []
        for i in range(n + 3):
            crs.append(cluster.create(CRS, lipsyncjob(f"q-{i}")))
            time.sleep(0.01)  # distinct creationTimestamps
        names = [c["metadata"]["name"] for c in crs]
        cluster.wait(lambda: len(cluster.list(JOBS, NS)) == n, message=f"{n} Jobs")
        for name in names[n:]:
            st = wait_status(cluster, name, phase="Queued")
            assert conds(st)["Reconciling"] == ("True", "Queued")
        time.sleep(0.5)
        assert len(cluster.list(JOBS, NS)) == n  # the budget holds

        # Each finished Job lets the oldest waiting one start; never more than n unfinished.
        for k, name in enumerate(names[n:]):
            running = [the_job(cluster, cr) for cr in crs[k:k + n]]
            pod = start_pod(cluster, running[0])
            end_pod(cluster, pod, exit_code=0, message=result_json(name=names[k]))
            finish_job(cluster, running[0], ok=True)
            the_job(cluster, crs[n + k])
            wait_status(cluster, name, phase="Pending")
            assert len(unfinished_jobs(cluster)) == n
            for later in names[n + k + 1:]:
                assert status_of(cluster, later)["phase"] == "Queued"
        assert len(cluster.list(JOBS, NS)) == n + 3


def test_kueue_creates_suspended_jobs_and_bypasses_the_budget(cluster, run_operator):
    with run_operator(LIPSYNC_GPU_BUDGET="1", LIPSYNC_KUEUE_QUEUE="gpu-queue"):
        crs = [cluster.create(CRS, lipsyncjob(f"k-{i}")) for i in range(3)]
        jobs = [the_job(cluster, cr) for cr in crs]
        st = wait_status(cluster, "k-0", phase="Queued")
    assert all(j["spec"]["suspend"] is True for j in jobs)
    assert all(j["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "gpu-queue" for j in jobs)
    assert st["reason"] == "WaitingForKueue"


# ---------------------------------------------------------------------------- restarts
def test_restart_mid_run_adopts_instead_of_duplicating(cluster, run_operator):
    with run_operator(LIPSYNC_GPU_BUDGET="1"):
        cr = cluster.create(CRS, lipsyncjob("r-1"))
        cluster.create(CRS, lipsyncjob("r-2"))
        job = the_job(cluster, cr)
        pod = start_pod(cluster, job)
        wait_status(cluster, "r-1", phase="Running")
        wait_status(cluster, "r-2", phase="Queued")
    posts_before = len(cluster.bodies("POST", JOBS_PATH))
    with run_operator(LIPSYNC_GPU_BUDGET="1"):
        cluster.logs[NS, pod["metadata"]["name"]] = '{"event": "progress", "stage": "encode", "progress": 80}\n'
        wait_status(cluster, "r-1", progress=80)  # the new operator follows the old Job
        time.sleep(0.5)
        assert len(cluster.list(JOBS, NS)) == 1
        assert status_of(cluster, "r-2")["phase"] == "Queued"  # the budget survived the restart
        end_pod(cluster, pod, exit_code=0, message=result_json(name="r-1"))
        finish_job(cluster, job, ok=True)
        wait_status(cluster, "r-1", phase="Succeeded")
        wait_status(cluster, "r-2", phase="Pending")
    assert len(cluster.bodies("POST", JOBS_PATH)) == posts_before + 1  # only r-2's Job


# ---------------------------------------------------------------------------- failures
def test_permanent_exit_code_fails_with_the_runners_reason(cluster, run_operator):
    code = REASONS["InvalidWeights"].exit_code
    assert code in PERMANENT_EXIT_CODES
    with run_operator():
        cr = cluster.create(CRS, lipsyncjob("bad-weights"))
        job = the_job(cluster, cr)
        rules = job["spec"]["podFailurePolicy"]["rules"]
        assert any(r["action"] == "FailJob" and code in r["onExitCodes"]["values"] for r in rules)
        pod = start_pod(cluster, job)
        wait_status(cluster, "bad-weights", phase="Running")
        end_pod(cluster, pod, exit_code=code, message=result_json(
            phase="Failed", reason="InvalidWeights", message="wav2lip_gan.pth is not a Wav2Lip checkpoint"))
        finish_job(cluster, job, ok=False, reason="PodFailurePolicy",
                   message="Container runner for pod renders/x failed with exit code 16 matching FailJob rule",
                   failed=1)
        st = wait_status(cluster, "bad-weights", phase="Failed")
        time.sleep(0.5)
        assert len(cluster.list(JOBS, NS)) == 1  # no retry by the operator
    assert st["reason"] == "InvalidWeights"
    assert "not a Wav2Lip checkpoint" in st["message"]
    assert conds(st) == {"Ready": ("False", "InvalidWeights"), "Reconciling": ("False", "Failed"),
                         "Stalled": ("True", "InvalidWeights")}


def test_exit_code_without_result_file_still_names_the_reason(cluster, run_operator):
    with run_operator():
        cr = cluster.create(CRS, lipsyncjob("no-face"))
        job = the_job(cluster, cr)
        pod = start_pod(cluster, job)
        end_pod(cluster, pod, exit_code=REASONS["NoFaceFound"].exit_code, message="Traceback ...\nboom")
        finish_job(cluster, job, ok=False, reason="PodFailurePolicy", failed=1)
        st = wait_status(cluster, "no-face", phase="Failed")
    assert st["reason"] == "NoFaceFound"


def test_evicted_pod_is_retried_not_failed(cluster, run_operator):
    with run_operator():
        cr = cluster.create(CRS, lipsyncjob("evict-me"))
        job = the_job(cluster, cr)
        rules = job["spec"]["podFailurePolicy"]["rules"]
        assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
        pod1 = start_pod(cluster, job, attempt=1)
        wait_status(cluster, "evict-me", phase="Running")
        end_pod(cluster, pod1, exit_code=143, disrupted=True)
        cluster.patch(JOBS, NS, job["metadata"]["name"], {"status": {"active": 0, "ready": 0}}, sub="status")
        st = cluster.wait(lambda: "retrying" in (status_of(cluster, "evict-me").get("message") or "")
                          and status_of(cluster, "evict-me"), message="the retry note")
        assert "EvictionByEvictionAPI" in st["message"]
        assert st["phase"] == "Running"  # phases never go backwards: the render is under way
        pod2 = start_pod(cluster, job, attempt=2)
        wait_status(cluster, "evict-me", phase="Running")
        end_pod(cluster, pod2, exit_code=0, message=result_json(name="evict-me"))
        finish_job(cluster, job, ok=True)
        wait_status(cluster, "evict-me", phase="Succeeded")
    assert cluster.phases(NS, "evict-me") == ["Pending", "Running", "Succeeded"]
    assert len(cluster.list(JOBS, NS)) == 1


def test_invalid_spec_fails_naming_the_field_and_makes_no_job(cluster, run_operator):
    with run_operator():
        cluster.create(CRS, lipsyncjob("no-weights", model={"name": "wav2lip"}))
        cluster.create(CRS, lipsyncjob("typo", faces={"select": "largest"}))
        st = wait_status(cluster, "no-weights", phase="Failed")
        st2 = wait_status(cluster, "typo", phase="Failed")
        time.sleep(0.3)
        assert cluster.list(JOBS, NS) == []
    assert st["reason"] == "InvalidSpec" and "spec.model.weights" in st["message"]
    assert conds(st)["Stalled"] == ("True", "InvalidSpec") and conds(st)["Ready"][0] == "False"
    assert "spec.faces" in st2["message"] and "unknown field" in st2["message"]


# ---------------------------------------------------------------------------- spec edits, deletion
def test_spec_change_after_start_is_refused(cluster, run_operator):
    with run_operator():
        cr = cluster.create(CRS, lipsyncjob("fixed"))
        job = the_job(cluster, cr)
        wait_status(cluster, "fixed", phase="Pending")
        cluster.patch(CRS, NS, "fixed", {"spec": {"output": {"uri": "s3://media/out/elsewhere"}}})
        st = cluster.wait(lambda: "immutable" in (status_of(cluster, "fixed").get("message") or "")
                          and status_of(cluster, "fixed"), message="the immutability message")
        assert cluster.get(JOBS, NS, job["metadata"]["name"])["spec"] == job["spec"]
    assert st["message"].startswith("spec is immutable once rendering started: delete and re-apply")
    assert st["observedGeneration"] == 2
    assert cluster.get(JOBS, NS, job["metadata"]["name"])["spec"] == job["spec"]


def test_delete_removes_the_job_in_background(cluster, run_operator):
    with run_operator():
        cr = cluster.create(CRS, lipsyncjob("gone"))
        job = the_job(cluster, cr)
        start_pod(cluster, job)
        wait_status(cluster, "gone", phase="Running")
        cluster.delete(CRS, NS, "gone")
        cluster.wait(lambda: cluster.get(JOBS, NS, job["metadata"]["name"]) is None, message="the Job deleted")
        cluster.wait(lambda: cluster.get(CRS, NS, "gone") is None, message="the LipSyncJob gone")
    deletes = cluster.bodies("DELETE", f"{JOBS_PATH}/{job['metadata']['name']}")
    assert deletes and deletes[0]["propagationPolicy"] == "Background"


def test_existing_job_is_adopted_on_conflict(cluster, run_operator):
    """A Job of this name already exists but is not in the operator's index (here: made without
    the managed-by label, as by an older operator): create answers 409, the operator reads it,
    checks the owner and adopts it instead of failing or making another."""
    from lipsync.spec import parse_job
    from lipsync_operator.jobs import MANAGED_BY_LABEL, job_manifest
    from lipsync_operator.settings import Settings

    cr = cluster.create(CRS, lipsyncjob("old"))
    manifest = job_manifest(parse_job({k: cr[k] for k in ("apiVersion", "kind", "spec")} | {
        "metadata": {k: cr["metadata"][k] for k in ("name", "namespace", "uid")}}), Settings())
    del manifest["metadata"]["labels"][MANAGED_BY_LABEL]
    cluster.create(JOBS, manifest)
    with run_operator():
        st = cluster.wait(lambda: manifest["metadata"]["name"] in (status_of(cluster, "old").get("message") or "")
                          and status_of(cluster, "old"), message="the adopted Job in the status")
        time.sleep(0.3)
    assert len(cluster.list(JOBS, NS)) == 1
    assert len(cluster.bodies("POST", JOBS_PATH)) == 1  # tried once, got 409, adopted
    assert st["phase"] == "Pending"


def test_spec_edit_while_queued_is_taken(cluster, run_operator):
    with run_operator(LIPSYNC_GPU_BUDGET="1"):
        first = cluster.create(CRS, lipsyncjob("e-1"))
        second = cluster.create(CRS, lipsyncjob("e-2"))
        job1 = the_job(cluster, first)
        wait_status(cluster, "e-2", phase="Queued")
        cluster.patch(CRS, NS, "e-2", {"spec": {"output": {"uri": "s3://media/out/edited"}}})
        st = wait_status(cluster, "e-2", observedGeneration=2)
        assert st["phase"] == "Queued" and "immutable" not in st["message"]
        pod = start_pod(cluster, job1)
        end_pod(cluster, pod, exit_code=0, message=result_json(name="e-1"))
        finish_job(cluster, job1, ok=True)
        job2 = the_job(cluster, second)
    env = {e["name"]: e.get("value") for e in job2["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert json.loads(env["LIPSYNC_JOB"])["spec"]["output"]["uri"] == "s3://media/out/edited"


def test_job_deleted_under_a_running_render_fails_it_without_a_new_job(cluster, run_operator):
    with run_operator():
        cr = cluster.create(CRS, lipsyncjob("orphan"))
        job = the_job(cluster, cr)
        start_pod(cluster, job)
        wait_status(cluster, "orphan", phase="Running")
        cluster.delete(JOBS, NS, job["metadata"]["name"])
        st = wait_status(cluster, "orphan", phase="Failed")
        time.sleep(0.5)
        assert cluster.list(JOBS, NS) == []
    assert st["reason"] == "JobDeleted" and "delete and re-apply" in st["message"]


def test_refused_job_creation_is_reported_and_retried(cluster, run_operator):
    cluster.refuse("POST", JOBS_PATH, status=403, times=1,
                   message='jobs "x" is forbidden: exceeded quota: gpu, requested: requests.nvidia.com/gpu=1')
    with run_operator():
        cr = cluster.create(CRS, lipsyncjob("quota"))
        st = wait_status(cluster, "quota", reason="JobCreateFailed")
        assert st["phase"] == "Pending" and "exceeded quota" in st["message"]
        the_job(cluster, cr)  # the dispatch is retried with backoff
        st = cluster.wait(lambda: status_of(cluster, "quota").get("reason") is None and status_of(cluster, "quota"),
                          message="the error cleared")
    assert st["phase"] == "Pending" and "created" in st["message"]


def test_transient_failure_is_retried_then_fails_with_its_reason(cluster, run_operator):
    code = REASONS["StorageUnavailable"].exit_code
    assert code not in PERMANENT_EXIT_CODES
    with run_operator():
        cr = cluster.create(CRS, lipsyncjob("flaky"))
        job = the_job(cluster, cr)
        pod1 = start_pod(cluster, job, attempt=1)
        wait_status(cluster, "flaky", phase="Running")
        end_pod(cluster, pod1, exit_code=code, message=result_json("Failed", "StorageUnavailable", "S3 answered 503"))
        cluster.patch(JOBS, NS, job["metadata"]["name"], {"status": {"failed": 1, "ready": 0}}, sub="status")
        st = cluster.wait(lambda: "StorageUnavailable" in (status_of(cluster, "flaky").get("message") or "")
                          and status_of(cluster, "flaky"), message="the retry note")
        assert st["phase"] in ("Running", "Pending") and "retrying" in st["message"]
        pod2 = start_pod(cluster, job, attempt=2)
        end_pod(cluster, pod2, exit_code=code, message=result_json("Failed", "StorageUnavailable", "S3 answered 503 again"))
        finish_job(cluster, job, ok=False, reason="BackoffLimitExceeded", message="Job has reached the specified backoff limit", failed=2)
        st = wait_status(cluster, "flaky", phase="Failed")
    assert st["reason"] == "StorageUnavailable" and "again" in st["message"]
    assert len(cluster.list(JOBS, NS)) == 1


def test_kueue_admission_unsuspends_into_running(cluster, run_operator):
    with run_operator(LIPSYNC_KUEUE_QUEUE="gpu-queue"):
        cr = cluster.create(CRS, lipsyncjob("admitted"))
        job = the_job(cluster, cr)
        wait_status(cluster, "admitted", phase="Queued", reason="WaitingForKueue")
        cluster.patch(JOBS, NS, job["metadata"]["name"], {"spec": {"suspend": False}})  # Kueue admits
        wait_status(cluster, "admitted", phase="Pending")
        start_pod(cluster, job)
        wait_status(cluster, "admitted", phase="Running")
    assert cluster.phases(NS, "admitted") == ["Queued", "Pending", "Running"]


def test_deleting_a_running_job_frees_its_slot_for_the_next(cluster, run_operator):
    with run_operator(LIPSYNC_GPU_BUDGET="1"):
        first = cluster.create(CRS, lipsyncjob("d-1"))
        time.sleep(0.01)
        second = cluster.create(CRS, lipsyncjob("d-2"))
        job1 = the_job(cluster, first)
        wait_status(cluster, "d-2", phase="Queued")
        cluster.delete(CRS, NS, "d-1")
        cluster.wait(lambda: cluster.get(JOBS, NS, job1["metadata"]["name"]) is None, message="d-1's Job deleted")
        the_job(cluster, second)
        wait_status(cluster, "d-2", phase="Pending")
    assert [j["metadata"]["name"] for j in cluster.list(JOBS, NS)] == [job_name("d-2", second["metadata"]["uid"])]
