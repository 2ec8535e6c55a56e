"""spec.parallelism > 1: one Indexed Job whose pods each render a share of the chunks, then a
stitch Job that joins them and publishes (issue 15). Unit tests of the manifests and the budget,
then the real operator against the emulated API server, the tests playing the Job controller."""

from __future__ import annotations

import json
import time

from kubesim import CRS, JOBS, NS, PODS, lipsyncjob, now_iso
from test_operator import conds, result_json, status_of, the_job, wait_status

from lipsync.errors import PERMANENT_EXIT_CODES, REASONS
from lipsync.spec import parse_job
from lipsync_operator.jobs import (
    COMPLETION_INDEX, GPU_LABEL, STEP_LABEL, gpu_slots, job_manifest, job_name, stitch_job_name,
)
from lipsync_operator.queue import Candidate, JobFact, plan
from lipsync_operator.settings import Settings

UID = "0b6c3a0e-6f0c-4a4e-9d6e-1b1d2f0e9a11"


def parsed(parallelism=3, **model):
    return parse_job({
        "apiVersion": "lipsync.dev/v1alpha1", "kind": "LipSyncJob",
        "metadata": {"name": "long-talk", "namespace": "renders", "uid": UID},
        "spec": {"video": "s3://media/a.mp4", "audio": "s3://media/a.wav", "parallelism": parallelism,
                 "model": {"name": "wav2lip", "weights": "s3://models/w.pth", **model},
                 "output": {"uri": "s3://media/out/a"}},
    })


def settings(**kw):
    return Settings(runner_image="img:1", **kw)


def runner(manifest):
    return manifest["spec"]["template"]["spec"]["containers"][0]


# ---------------------------------------------------------------------------- manifests (pure)
def test_parallelism_makes_an_indexed_job_with_per_index_retries_and_the_same_failure_policy():
    one = job_manifest(parsed(1), settings())
    many = job_manifest(parsed(3), settings(backoff_limit=4))
    spec = many["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    assert spec["backoffLimitPerIndex"] == 4 and spec["maxFailedIndexes"] == 0
    assert "backoffLimit" not in spec  # with backoffLimitPerIndex the per-index limit governs
    assert spec["podFailurePolicy"] == one["spec"]["podFailurePolicy"]
    assert runner(many)["command"][-2:] == ["--shard", "auto/3"]
    assert runner(many)["resources"]["limits"]["nvidia.com/gpu"] == "1"  # per pod
    assert many["metadata"]["name"] == job_name("long-talk", UID)
    assert many["metadata"]["labels"][STEP_LABEL] == "render"
    # parallelism 1 is exactly the Job of before: no Indexed mode, no shard, backoffLimit kept.
    assert "completionMode" not in one["spec"] and "--shard" not in runner(one)["command"]
    assert (one["spec"]["completions"], one["spec"]["parallelism"], one["spec"]["backoffLimit"]) == (1, 1, 3)


def test_with_kueue_the_indexed_job_is_one_suspended_workload():
    many = job_manifest(parsed(3), settings(kueue_queue="gpu"))
    assert many["spec"]["suspend"] is True and many["spec"]["completionMode"] == "Indexed"
    assert many["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu"
    assert many["spec"]["parallelism"] == many["spec"]["completions"] == 3  # admitted as 3 pods at once


def test_stitch_job_runs_the_plain_runner_without_a_gpu_unless_cuda_is_demanded():
    stitch = job_manifest(parsed(3), settings(), step="stitch")
    assert stitch["metadata"]["name"] == stitch_job_name("long-talk", UID) != job_name("long-talk", UID)
    assert "completionMode" not in stitch["spec"] and stitch["spec"]["completions"] == 1
    assert "--shard" not in runner(stitch)["command"]
    assert "nvidia.com/gpu" not in runner(stitch)["resources"].get("limits", {})
    assert {"name": "CUDA_VISIBLE_DEVICES", "value": ""} in runner(stitch)["env"]
    assert stitch["metadata"]["labels"][GPU_LABEL] == "false" and stitch["metadata"]["labels"][STEP_LABEL] == "stitch"
    cuda = job_manifest(parsed(3, options={"device": "cuda"}), settings(), step="stitch")
    assert runner(cuda)["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert len(stitch_job_name("x" * 253, UID)) <= 63


def test_indexed_pod_hostnames_fit_a_dns_label():
    # The Job controller names each pod's host "<job name>-<index>": a DNS label of at most 63.
    from lipsync.spec import MAX_PARALLELISM
    assert len(f"{job_name('y' * 253, UID)}-{MAX_PARALLELISM - 1}") <= 63


def test_a_job_from_before_parallelism_keeps_its_spec_digest():
    # A Job (and status.specDigest) made before spec.parallelism existed: its LIPSYNC_JOB has no
    # such key. The same spec parsed now has parallelism 1: still the same spec, not an edit.
    from lipsync_operator.jobs import job_spec_digest, runner_document, spec_digest
    now = job_manifest(parsed(1), settings())
    old = json.loads(json.dumps(now))
    env = old["spec"]["template"]["spec"]["containers"][0]["env"]
    doc = json.loads(env[0]["value"])
    assert doc["spec"].pop("parallelism") == 1
    env[0]["value"] = json.dumps(doc)
    assert job_spec_digest(old) == job_spec_digest(now) == spec_digest(runner_document(parsed(1))["spec"])
    assert spec_digest(runner_document(parsed(2))["spec"]) != job_spec_digest(old)


def test_gpu_slots_count_pods():
    assert gpu_slots(parsed(3)) == 3
    assert gpu_slots(parsed(3, options={"device": "cpu"})) == 0


# ---------------------------------------------------------------------------- the budget (pure)
def cand(name, t, slots=1):
    return Candidate(namespace="ns", name=name, uid=f"uid-{name}", created=f"2026-01-01T00:00:{t:02d}Z",
                     gpu=True, slots=slots)


def test_budget_counts_gpu_pods_and_a_wide_job_is_not_overtaken():
    running = [JobFact(namespace="ns", name="lipsync-r", owner="r", uid="uid-r", gpu=True, finished=False, slots=3)]
    p = plan([cand("a", 1), cand("b", 2, slots=2), cand("c", 3)], running, budget=5)
    assert p.running == 3
    assert [c.name for c in p.start] == ["a"] and [c.name for c in p.wait] == ["b", "c"]  # b needs 2, 1 is free
    p = plan([cand("b", 2, slots=2), cand("c", 3)], running, budget=5)
    assert [c.name for c in p.start] == ["b"]
    done = [JobFact(namespace="ns", name="lipsync-r", owner="r", uid="uid-r", gpu=True, finished=True, slots=3)]
    assert plan([cand("b", 2, slots=2)], done, budget=2).running == 0


def test_a_finished_render_keeps_a_slot_for_its_gpu_stitch_until_that_exists():
    rendered = JobFact(namespace="ns", name="lipsync-r", owner="r", uid="uid-r", gpu=True, finished=True, slots=2,
                       reserves=1)
    assert plan([cand("b", 2, slots=2)], [rendered], budget=2).running == 1  # b waits: one slot is the stitch's
    stitch = JobFact(namespace="ns", name="lipsync-r-stitch", owner="r", uid="uid-r", gpu=True, finished=False,
                     step="stitch")
    assert plan([], [rendered, stitch], budget=2).running == 1  # the stitch itself, not twice
    m = job_manifest(parsed(2, options={"device": "cuda"}), settings())
    assert m["metadata"]["labels"]["lipsync.dev/stitch-gpu"] == "true"
    assert job_manifest(parsed(2), settings())["metadata"]["labels"]["lipsync.dev/stitch-gpu"] == "false"  # "auto": CPU


# ---------------------------------------------------------------------------- the operator (emulated API)
def index_pod(cluster, job, index, attempt=1):
    """The Job controller's part for an Indexed Job: a pod for one index, running."""
    meta = job["metadata"]
    labels = dict(job["spec"]["template"]["metadata"]["labels"])
    labels.update({"batch.kubernetes.io/job-name": meta["name"], COMPLETION_INDEX: str(index)})
    return cluster.create(PODS, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{meta['name']}-{index}-{attempt}", "namespace": NS, "labels": labels,
                     "annotations": {COMPLETION_INDEX: str(index)}},
        "spec": job["spec"]["template"]["spec"],
        "status": {"phase": "Running", "containerStatuses": [
            {"name": "runner", "ready": True, "state": {"running": {"startedAt": now_iso()}}}]},
    })


def end(cluster, pod, code, message=""):
    cluster.patch(PODS, NS, pod["metadata"]["name"], {"status": {
        "phase": "Succeeded" if code == 0 else "Failed",
        "containerStatuses": [{"name": "runner", "ready": False, "state": {"terminated": {
            "exitCode": code, "reason": "Completed" if code == 0 else "Error", "message": message,
            "finishedAt": now_iso()}}}]}}, sub="status")


def job_status(cluster, job, **st):
    cluster.patch(JOBS, NS, job["metadata"]["name"], {"status": st}, sub="status")


def partial(name):  # what `lipsync run --shard` writes as its result: nothing published
    return json.dumps({"phase": "Succeeded", "message": "chunks rendered", "status": "partial"})


def test_parallelism_3_is_one_indexed_job_taking_3_budget_slots(cluster, run_operator):
    with run_operator(LIPSYNC_GPU_BUDGET="4"):
        cr = cluster.create(CRS, lipsyncjob("wide", parallelism=3))
        job = the_job(cluster, cr)
        st = wait_status(cluster, "wide", phase="Pending")
        assert st["indices"] == {"done": 0, "total": 3}
        one = the_job(cluster, cluster.create(CRS, lipsyncjob("one")))  # the 4th slot
        time.sleep(0.05)
        cluster.create(CRS, lipsyncjob("two"))
        time.sleep(0.05)
        cluster.create(CRS, lipsyncjob("pair", parallelism=2))
        wait_status(cluster, "two", phase="Queued")
        wait_status(cluster, "pair", phase="Queued")
        cluster.create(CRS, lipsyncjob("five", parallelism=5))  # more GPUs than the whole budget
        too_wide = wait_status(cluster, "five", phase="Failed")
        time.sleep(0.3)
        assert len(cluster.list(JOBS, NS)) == 2
        # The 1-pod job ends: one slot frees, "two" (older) takes it; "pair" still needs 2.
        end(cluster, index_pod(cluster, one, 0), 0, result_json(name="one"))
        job_status(cluster, one, active=0, succeeded=1, completionTime=now_iso(),
                   conditions=[{"type": "Complete", "status": "True", "lastTransitionTime": now_iso()}])
        wait_status(cluster, "one", phase="Succeeded")
        wait_status(cluster, "two", phase="Pending")
        time.sleep(0.3)
        assert status_of(cluster, "pair")["phase"] == "Queued"
        assert len(cluster.list(JOBS, NS)) == 3
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][-2:] == ["--shard", "auto/3"]
    assert too_wide["reason"] == "NotAllowed" and "spec.parallelism 5" in too_wide["message"]
    assert "at most 4" in too_wide["message"]


def test_indices_out_of_order_a_retry_then_the_stitch_step(cluster, run_operator):
    with run_operator(LIPSYNC_GPU_BUDGET="3"):
        cr = cluster.create(CRS, lipsyncjob("split", parallelism=3))
        job = the_job(cluster, cr)
        pods = [index_pod(cluster, job, k) for k in range(3)]
        job_status(cluster, job, active=3, ready=3, startTime=now_iso())
        st = wait_status(cluster, "split", phase="Running")
        assert st["indices"] == {"done": 0, "total": 3} and "0 of 3 indices done" in st["message"]
        cluster.create(CRS, lipsyncjob("after"))
        wait_status(cluster, "after", phase="Queued")  # 3 GPU pods run: the budget is full

        # Aggregated progress: each index's own progress line, averaged.
        for pod, pct in zip(pods, (50, 20, 80)):
            cluster.logs[NS, pod["metadata"]["name"]] = json.dumps(
                {"event": "progress", "stage": "render", "progress": pct}) + "\n"
        wait_status(cluster, "split", progress=50)

        # Index 2 finishes first.
        end(cluster, pods[2], 0, partial("split"))
        job_status(cluster, job, active=2, ready=2, succeeded=1, completedIndexes="2")
        st = wait_status(cluster, "split", indices={"done": 1, "total": 3})
        assert "1 of 3 indices done" in st["message"]
        # Index 1 fails transiently (storage): the Job controller retries that index alone.
        end(cluster, pods[1], REASONS["StorageUnavailable"].exit_code, json.dumps(
            {"phase": "Failed", "reason": "StorageUnavailable", "message": "S3 did not answer"}))
        job_status(cluster, job, active=1, ready=1, succeeded=1, failed=1, completedIndexes="2", failedIndexes="")
        def retry_note():
            st = status_of(cluster, "split")
            return st if "retrying" in (st.get("message") or "") else None
        st = cluster.wait(retry_note, message="retry note")
        assert st["phase"] == "Running"
        assert st["message"].startswith("index 1 of 3: attempt 2") and "StorageUnavailable" in st["message"]
        retry = index_pod(cluster, job, 1, attempt=2)
        job_status(cluster, job, active=2, ready=2, succeeded=1, failed=1, completedIndexes="2")
        end(cluster, pods[0], 0, partial("split"))
        end(cluster, retry, 0, partial("split"))
        job_status(cluster, job, active=0, ready=0, succeeded=3, failed=1, completedIndexes="0-2",
                   completionTime=now_iso(),
                   conditions=[{"type": "Complete", "status": "True", "lastTransitionTime": now_iso()}])

        # The stitch step: an ordinary Job, no GPU; the freed GPUs go to the queue.
        name = stitch_job_name("split", cr["metadata"]["uid"])
        stitch = cluster.wait(lambda: cluster.get(JOBS, NS, name), message="stitch Job")
        st = wait_status(cluster, "split", stitchJobName=name)
        assert st["phase"] == "Running" and st["stage"] == "stitch"
        assert st["indices"] == {"done": 3, "total": 3} and st["jobName"] == job["metadata"]["name"]
        wait_status(cluster, "after", phase="Pending")
        spod = index_pod(cluster, stitch, 0)
        job_status(cluster, stitch, active=1, ready=1, startTime=now_iso())
        end(cluster, spod, 0, result_json(name="split"))
        job_status(cluster, stitch, active=0, succeeded=1, completionTime=now_iso(),
                   conditions=[{"type": "Complete", "status": "True", "lastTransitionTime": now_iso()}])
        st = wait_status(cluster, "split", phase="Succeeded")
        time.sleep(0.3)
        stitch_posts = [b for b in cluster.bodies("POST", f"/apis/batch/v1/namespaces/{NS}/jobs")
                        if b["metadata"]["name"] == name]
    assert len(stitch_posts) == 1  # one stitch Job, ever
    assert "completionMode" not in stitch["spec"] and "--shard" not in stitch["spec"]["template"]["spec"][
        "containers"][0]["command"]
    assert st["artifacts"]["video"] == "s3://media/out/split/output.mp4" and st["progress"] == 100
    assert conds(st)["Ready"] == ("True", "Succeeded")
    assert cluster.phases(NS, "split") == ["Pending", "Running", "Succeeded"]
    seen = [p for v in cluster.history(CRS, NS, "split") if (p := ((v or {}).get("status") or {}).get("progress"))]
    assert seen == sorted(seen) and 50 in seen


def test_render_completed_while_the_operator_was_down_is_stitched_once(cluster, run_operator):
    with run_operator(LIPSYNC_GPU_BUDGET="2"):
        cr = cluster.create(CRS, lipsyncjob("resumed", parallelism=2))
        job = the_job(cluster, cr)
        pods = [index_pod(cluster, job, k) for k in range(2)]
        job_status(cluster, job, active=2, ready=2, startTime=now_iso())
        wait_status(cluster, "resumed", phase="Running")
    for pod in pods:  # no operator sees the indices end
        end(cluster, pod, 0, partial("resumed"))
    job_status(cluster, job, active=0, ready=0, succeeded=2, completedIndexes="0-1", completionTime=now_iso(),
               conditions=[{"type": "Complete", "status": "True", "lastTransitionTime": now_iso()}])
    name = stitch_job_name("resumed", cr["metadata"]["uid"])
    with run_operator(LIPSYNC_GPU_BUDGET="2"):
        st = wait_status(cluster, "resumed", stitchJobName=name)
        time.sleep(0.5)
        posts = [b for b in cluster.bodies("POST", f"/apis/batch/v1/namespaces/{NS}/jobs")
                 if b["metadata"]["name"] == name]
    assert len(posts) == 1 and cluster.get(JOBS, NS, name) is not None
    assert st["phase"] == "Running" and st["indices"] == {"done": 2, "total": 2} and st["stage"] == "stitch"


def test_kueue_edit_of_parallelism_while_suspended_replaces_the_indexed_job(cluster, run_operator):
    with run_operator(LIPSYNC_KUEUE_QUEUE="gpu-queue"):
        cr = cluster.create(CRS, lipsyncjob("kw", parallelism=3))
        first = the_job(cluster, cr)
        wait_status(cluster, "kw", phase="Queued", reason="WaitingForKueue", indices={"done": 0, "total": 3})
        cluster.patch(CRS, NS, "kw", {"spec": {"parallelism": 2}})
        st = wait_status(cluster, "kw", observedGeneration=2, jobName=job_name("kw", cr["metadata"]["uid"], 2),
                         indices={"done": 0, "total": 2})
        assert st["phase"] == "Queued" and conds(st)["Stalled"][0] == "False"
        cluster.wait(lambda: cluster.get(JOBS, NS, first["metadata"]["name"]) is None, message="old Job deleted")
        (second,) = cluster.list(JOBS, NS)
        assert (second["spec"]["completions"], second["spec"]["completionMode"]) == (2, "Indexed")
        cluster.patch(CRS, NS, "kw", {"spec": {"parallelism": 1}})
        st = wait_status(cluster, "kw", observedGeneration=3, jobName=job_name("kw", cr["metadata"]["uid"], 3))
        cluster.wait(lambda: cluster.get(JOBS, NS, second["metadata"]["name"]) is None, message="2nd Job deleted")
        (third,) = cluster.list(JOBS, NS)
        st = status_of(cluster, "kw")
    assert "completionMode" not in third["spec"] and third["spec"]["completions"] == 1
    assert "indices" not in st and st["phase"] == "Queued"


def test_one_index_failing_for_good_fails_the_job_with_its_reason(cluster, run_operator):
    code = REASONS["NoFaceFound"].exit_code
    assert code in PERMANENT_EXIT_CODES
    with run_operator(LIPSYNC_GPU_BUDGET="3"):
        cr = cluster.create(CRS, lipsyncjob("bad", parallelism=3))
        job = the_job(cluster, cr)
        pods = [index_pod(cluster, job, k) for k in range(3)]
        job_status(cluster, job, active=3, ready=3, startTime=now_iso())
        wait_status(cluster, "bad", phase="Running")
        end(cluster, pods[0], 0, partial("bad"))
        job_status(cluster, job, active=2, ready=2, succeeded=1, completedIndexes="0")
        wait_status(cluster, "bad", indices={"done": 1, "total": 3})
        end(cluster, pods[1], code, json.dumps({"phase": "Failed", "reason": "NoFaceFound",
                                                "message": "no face in frames 2400-2700 (chunk 9)"}))
        end(cluster, pods[2], 143)  # terminated by the Job controller when the Job failed
        job_status(cluster, job, active=0, ready=0, succeeded=1, failed=2, completedIndexes="0", failedIndexes="1",
                   conditions=[{"type": "Failed", "status": "True", "reason": "PodFailurePolicy",
                                "message": "Container runner for pod renders/x exited with a non-zero exit code",
                                "lastTransitionTime": now_iso()}])
        st = wait_status(cluster, "bad", phase="Failed")
        time.sleep(0.3)
        names = [j["metadata"]["name"] for j in cluster.list(JOBS, NS)]
    assert st["reason"] == "NoFaceFound"
    assert st["message"] == "index 1 of 3: no face in frames 2400-2700 (chunk 9)"
    assert conds(st)["Stalled"] == ("True", "NoFaceFound")
    assert names == [job["metadata"]["name"]]  # no stitch after a failed render


# ---------------------------------------------------------------------------- status (pure)
def test_completed_indexes_and_aggregate_progress():
    from lipsync_operator.status import aggregate_progress, completed_indexes
    assert completed_indexes("0,2-4,7") == {0, 2, 3, 4, 7} and completed_indexes("") == set()
    assert aggregate_progress(4, {1}, {0: 50, 2: 10}) == (50 + 100 + 10 + 0) // 4


def test_the_permanent_failure_names_the_index_not_a_pod_terminated_after_it():
    from lipsync_operator.status import from_indexed

    def pod(k, code, result=None):
        return {"metadata": {"name": f"p-{k}", "annotations": {COMPLETION_INDEX: str(k)}},
                "status": {"phase": "Failed", "containerStatuses": [{"name": "runner", "state": {"terminated": {
                    "exitCode": code, "message": json.dumps(result) if result else ""}}}]}}
    bad = pod(2, REASONS["InvalidWeights"].exit_code, {"phase": "Failed", "reason": "InvalidWeights",
                                                       "message": "not a Wav2Lip checkpoint"})
    job = {"spec": {"completions": 3}, "status": {"conditions": [
        {"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "lastTransitionTime": "t"}]}}
    st = from_indexed(None, job, [bad, pod(0, 143)], total=3, generation=1, now="t", render_name="r")
    assert (st["phase"], st["reason"]) == ("Failed", "InvalidWeights")
    assert st["message"] == "index 2 of 3: not a Wav2Lip checkpoint"


def complete(cluster, job):
    job_status(cluster, job, active=0, ready=0, succeeded=job["spec"]["completions"],
               completedIndexes=f"0-{job['spec']['completions'] - 1}", completionTime=now_iso(),
               conditions=[{"type": "Complete", "status": "True", "lastTransitionTime": now_iso()}])


def render_all_indices(cluster, name, job):
    pods = [index_pod(cluster, job, k) for k in range(job["spec"]["completions"])]
    job_status(cluster, job, active=len(pods), ready=len(pods), startTime=now_iso())
    wait_status(cluster, name, phase="Running")
    for p in pods:
        end(cluster, p, 0, partial(name))
    complete(cluster, job)


def test_a_deleted_stitch_job_ends_the_job_instead_of_running_for_ever(cluster, run_operator):
    from lipsync_operator.jobs import stitch_job_name

    with run_operator(LIPSYNC_GPU_BUDGET="2", LIPSYNC_RESYNC_SECONDS="0.5"):
        cr = cluster.create(CRS, lipsyncjob("split", parallelism=2))
        render_all_indices(cluster, "split", the_job(cluster, cr))
        name = stitch_job_name("split", cr["metadata"]["uid"])
        cluster.wait(lambda: cluster.get(JOBS, NS, name), message="the stitch Job")
        wait_status(cluster, "split", stitchJobName=name)
        cluster.delete(JOBS, NS, name)  # someone deletes the stitch Job before it ran
        st = wait_status(cluster, "split", phase="Failed", timeout=10)
    assert st["reason"] == "JobDeleted" and name in st["message"]


def unfinished_gpu_pods(cluster):
    from lipsync_operator.jobs import GPU_LABEL

    return sum(j["spec"].get("parallelism") or 1 for j in cluster.list(JOBS, NS)
               if j["metadata"]["labels"].get(GPU_LABEL) == "true"
               and not any(c["type"] in ("Complete", "Failed") for c in (j.get("status") or {}).get("conditions") or []))


def test_a_gpu_stitch_job_keeps_its_slot_through_a_failed_create(cluster, run_operator):
    wav2lip = {"name": "wav2lip", "weights": "s3://models/w.pth"}
    with run_operator(LIPSYNC_GPU_BUDGET="2", LIPSYNC_RESYNC_SECONDS="0.5"):
        cr = cluster.create(CRS, lipsyncjob("wide", parallelism=2, model={**wav2lip, "options": {"device": "cuda"}}))
        job = the_job(cluster, cr)
        cluster.create(CRS, lipsyncjob("next", parallelism=2, model=wav2lip))
        wait_status(cluster, "next", phase="Queued")
        # the stitch Job's creation fails a few times (retried with backoff) while the queue looks again
        cluster.refuse("POST", f"/apis/batch/v1/namespaces/{NS}/jobs", status=500, message="etcd hiccup", times=4)
        render_all_indices(cluster, "wide", job)  # its stitch needs a GPU: one of its 2 slots stays its own
        peak = 0
        for _ in range(30):
            peak = max(peak, unfinished_gpu_pods(cluster))
            time.sleep(0.1)
        assert peak <= 2, "more GPU pods than the budget"
        assert status_of(cluster, "next")["phase"] == "Queued"  # 1 slot free: not the 2 it needs
