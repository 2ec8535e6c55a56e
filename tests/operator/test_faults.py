"""Fault injection: the operator converges to the true status whatever the API server answers,
whenever the operator runs, and never starts a render twice.

Each case is the real operator against the emulated API server (kmock), with the faults a busy
real API server produces injected into the operator's own requests (``Cluster.refuse``), or with
the operator stopped while the cluster moves on.
"""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path

import pytest
from kubesim import CRS, JOBS, NS, PODS, end_pod, finish_job, lipsyncjob, start_pod
from test_operator import JOBS_PATH, conds, result_json, the_job, wait_status

from tests import s3server
from tests.k8s_helpers import cel_eval, have_cel

CR_PATH = f"/apis/lipsync.dev/v1alpha1/namespaces/{NS}/lipsyncjobs"


def status_path(name: str) -> str:
    return f"{CR_PATH}/{name}/status"


def refusals_left(cluster, method: str, path: str) -> int:
    return cluster.in_loop(lambda: len(cluster.api.refusals.get((method, path), [])))


def job_posts(cluster) -> int:
    return len(cluster.bodies("POST", JOBS_PATH))


# ---------------------------------------------------------------------------- failed writes
@pytest.mark.parametrize("code", [409, 500, 429])
def test_failed_status_write_at_completion_still_ends_true(cluster, run_operator, code):
    """One refused status write (conflict, server error, throttling) when the Job completes:
    the LipSyncJob still reaches Succeeded (retried with backoff), not Running forever."""
    with run_operator():
        cr = cluster.create(CRS, lipsyncjob("w"))
        job = the_job(cluster, cr)
        pod = start_pod(cluster, job)
        wait_status(cluster, "w", phase="Running")
        time.sleep(0.3)  # nothing else in flight: the next status write is the completion's
        cluster.refuse("PATCH", status_path("w"), status=code, message=f"injected {code}")
        end_pod(cluster, pod, exit_code=0, message=result_json(name="w"))
        finish_job(cluster, job, ok=True)
        st = wait_status(cluster, "w", phase="Succeeded", timeout=10)
        assert refusals_left(cluster, "PATCH", status_path("w")) == 0  # the fault did hit that write
    assert conds(st)["Ready"] == ("True", "Succeeded")
    assert st["artifacts"]["video"] == "s3://media/out/w/output.mp4"


def test_failed_status_write_at_failure_still_ends_true(cluster, run_operator):
    with run_operator():
        cr = cluster.create(CRS, lipsyncjob("wf"))
        job = the_job(cluster, cr)
        pod = start_pod(cluster, job)
        wait_status(cluster, "wf", phase="Running")
        time.sleep(0.3)
        cluster.refuse("PATCH", status_path("wf"), status=500, message="injected", times=3)
        end_pod(cluster, pod, exit_code=15, message=result_json("Failed", "NoFaceFound", "no face"))
        finish_job(cluster, job, ok=False, reason="PodFailurePolicy", failed=1)
        st = wait_status(cluster, "wf", phase="Failed", timeout=15)
    assert st["reason"] == "NoFaceFound" and conds(st)["Stalled"] == ("True", "NoFaceFound")


def test_conflict_on_kopfs_own_patch_does_not_strand_a_new_job(cluster, run_operator):
    """kopf's first patch of a new LipSyncJob (finalizer, annotations) answered 409: the job is
    still admitted (its Job created, its status written) without another event arriving."""
    with run_operator():
        cluster.refuse("PATCH", f"{CR_PATH}/lone", status=409, message="injected conflict")
        cr = cluster.create(CRS, lipsyncjob("lone"))
        the_job(cluster, cr)
        wait_status(cluster, "lone", phase="Pending", timeout=10)
        cluster.wait(lambda: refusals_left(cluster, "PATCH", f"{CR_PATH}/lone") == 0, message="kopf's patch refused")
        time.sleep(0.3)
        assert len(cluster.list(JOBS, NS)) == 1


# ---------------------------------------------------------------------------- operator down
def test_job_deleted_while_operator_down_fails_without_a_second_job(cluster, run_operator):
    with run_operator():
        cr = cluster.create(CRS, lipsyncjob("lost"))
        job = the_job(cluster, cr)
        pod = start_pod(cluster, job)
        wait_status(cluster, "lost", phase="Running")
    # No operator: someone deletes the Job (the garbage collector takes its pod).
    cluster.delete(JOBS, NS, job["metadata"]["name"])
    cluster.delete(PODS, NS, pod["metadata"]["name"])
    with run_operator():
        st = wait_status(cluster, "lost", phase="Failed")
        time.sleep(0.5)
        assert cluster.list(JOBS, NS) == []
    assert job_posts(cluster) == 1
    assert st["reason"] == "JobDeleted" and "delete and re-apply" in st["message"]
    assert st["jobName"] == job["metadata"]["name"]
    assert cluster.phases(NS, "lost") == ["Pending", "Running", "Failed"]  # never back to Pending


@pytest.fixture
def s3(tmp_path, monkeypatch):
    yield from s3server.running(tmp_path, monkeypatch)


def publish_metrics(uri: str, identity: dict, tmp: Path) -> None:
    """What the runner's last act leaves at the output: metrics.json with the job's identity."""
    from lipsync.io.publish import open_store

    artifacts = {k: f"{uri}/{n}" for k, n in
                 (("video", "output.mp4"), ("preview", "preview.jpg"), ("log", "run.log"), ("metrics", "metrics.json"))}
    path = tmp / f"metrics-{identity['job']}.json"
    path.write_text(json.dumps({"identity": identity, "artifacts": artifacts, "stages": {}}))
    open_store(uri).put("metrics.json", path, content_type="application/json", metadata={})


def test_job_finished_and_removed_while_operator_down(cluster, run_operator, s3, tmp_path):
    """Two renders whose Jobs vanish while no operator runs (their TTL removed them): the one whose
    output holds its own metrics.json is Succeeded with its artifacts; the other's output holds
    an earlier job's render (another uid), so it is Failed/JobDeleted. No Job is made again."""
    done_uri, other_uri = f"s3://{s3server.BUCKET}/out/done", f"s3://{s3server.BUCKET}/out/other"
    with run_operator():
        done = cluster.create(CRS, lipsyncjob("done", output={"uri": done_uri}))
        other = cluster.create(CRS, lipsyncjob("other", output={"uri": other_uri}))
        jobs = {n: the_job(cluster, cr) for n, cr in (("done", done), ("other", other))}
        pods = {n: start_pod(cluster, j) for n, j in jobs.items()}
        wait_status(cluster, "done", phase="Running")
        wait_status(cluster, "other", phase="Running")
    # No operator: "done" finishes and publishes; both Jobs are then removed with their pods.
    publish_metrics(done_uri, {"job": "done", "namespace": NS, "uid": done["metadata"]["uid"]}, tmp_path)
    publish_metrics(other_uri, {"job": "other", "namespace": NS, "uid": "uid-of-an-earlier-other"}, tmp_path)
    for n in jobs:
        cluster.delete(JOBS, NS, jobs[n]["metadata"]["name"])
        cluster.delete(PODS, NS, pods[n]["metadata"]["name"])
    with run_operator():
        st = wait_status(cluster, "done", phase="Succeeded")
        st2 = wait_status(cluster, "other", phase="Failed")
        time.sleep(0.5)
        assert cluster.list(JOBS, NS) == []
    assert job_posts(cluster) == 2
    assert st["artifacts"]["video"] == f"{done_uri}/output.mp4" and st["progress"] == 100
    assert conds(st)["Ready"] == ("True", "Succeeded")
    assert cluster.phases(NS, "done") == ["Pending", "Running", "Succeeded"]
    assert st2["reason"] == "JobDeleted"


# ---------------------------------------------------------------------------- refused edits
def _health(obj: dict) -> tuple[str, bool, bool]:
    """(Argo CD health status, Flux current, Flux failed) of a LipSyncJob as stored."""
    from tests.test_gitops import GITOPS, _lua_health, _one

    argo = _lua_health(obj)["status"]
    if not have_cel():
        pytest.skip("cel-expr-python (the CEL runtime) is not installed")
    (expr,) = _one(GITOPS / "flux-kustomization.yaml", "Kustomization")["spec"]["healthCheckExprs"]
    variables = {k: obj.get(k, {}) for k in ("apiVersion", "kind", "metadata", "spec", "status")}
    return argo, cel_eval(expr["current"], variables), cel_eval(expr["failed"], variables)


def _ready(obj: dict) -> bool:
    return conds(obj.get("status") or {}).get("Ready", ("False",))[0] == "True"


def test_refused_edit_is_stalled_until_reverted_never_ready(cluster, run_operator):
    """An edit of a rendering job's output is refused: Stalled=True/SpecImmutable at the new
    generation (kubectl wait, Argo CD and Flux agree: failed), through the end of the old render;
    reverting the spec makes the finished render Ready again, at the reverting generation."""
    original = "s3://media/out/fixed"
    with run_operator():
        cr = cluster.create(CRS, lipsyncjob("fixed"))
        job = the_job(cluster, cr)
        pod = start_pod(cluster, job)
        wait_status(cluster, "fixed", phase="Running")
        cluster.patch(CRS, NS, "fixed", {"spec": {"output": {"uri": "s3://media/out/elsewhere"}}})
        st = wait_status(cluster, "fixed", observedGeneration=2)
        assert st["phase"] == "Running" and st["message"].startswith("spec is immutable")
        assert conds(st) == {"Ready": ("False", "SpecImmutable"), "Reconciling": ("False", "SpecImmutable"),
                             "Stalled": ("True", "SpecImmutable")}
        assert _health(cluster.get(CRS, NS, "fixed")) == ("Degraded", False, True)

        end_pod(cluster, pod, exit_code=0, message=result_json(name="fixed"))
        finish_job(cluster, job, ok=True)
        st = wait_status(cluster, "fixed", phase="Succeeded")
        assert conds(st)["Ready"] == ("False", "SpecImmutable") and conds(st)["Stalled"][0] == "True"
        assert st["observedGeneration"] == 2 and st["message"].startswith("spec is immutable")
        assert _health(cluster.get(CRS, NS, "fixed")) == ("Degraded", False, True)

        cluster.patch(CRS, NS, "fixed", {"spec": {"output": {"uri": original}}})  # reverted
        st = wait_status(cluster, "fixed", observedGeneration=3)
        assert conds(st) == {"Ready": ("True", "Succeeded"), "Reconciling": ("False", "Succeeded"),
                             "Stalled": ("False", "Succeeded")}
        assert "immutable" not in st["message"]
        assert _health(cluster.get(CRS, NS, "fixed")) == ("Healthy", True, False)
        assert cluster.get(JOBS, NS, job["metadata"]["name"])["spec"] == job["spec"]
    assert len(cluster.list(JOBS, NS)) == 1
    # Never Ready at the generation whose spec was not rendered; Argo CD and Flux agree on every version.
    for v in cluster.history(CRS, NS, "fixed"):
        if v is None or not v.get("status"):
            continue
        if _ready(v):
            assert v["status"]["observedGeneration"] != 2
        argo, current, failed = _health(v)
        assert (argo == "Healthy") == current and (argo == "Degraded") == failed, v["status"]


# ---------------------------------------------------------------------------- the queue
def phase_in(cluster, ns: str, name: str) -> str | None:
    return ((cluster.get(CRS, ns, name) or {}).get("status") or {}).get("phase")


def jobs_of(cluster, ns: str) -> list[dict]:
    return cluster.list(JOBS, ns)


def complete(cluster, job: dict) -> None:
    """The Job controller and kubelet: the Job's pod runs and the Job completes."""
    pod = start_pod(cluster, job)
    end_pod(cluster, pod, exit_code=0, message=result_json(name=job["metadata"]["name"]))
    finish_job(cluster, job, ok=True)


def test_one_namespaces_backlog_does_not_hold_back_anothers_first_job(cluster, run_operator):
    """150 jobs from team-a, then one from team-b: team-b's job gets the next free slot."""
    with run_operator(LIPSYNC_GPU_BUDGET="2", LIPSYNC_JOB_NAMESPACES="team-a,team-b"):
        for i in range(150):
            cluster.create(CRS, lipsyncjob(f"a-{i:03d}", namespace="team-a"))
        cluster.wait(lambda: phase_in(cluster, "team-a", "a-149") == "Queued", timeout=90, message="a-149 Queued")
        running = jobs_of(cluster, "team-a")
        assert len(running) == 2
        cluster.create(CRS, lipsyncjob("first", namespace="team-b"))
        cluster.wait(lambda: phase_in(cluster, "team-b", "first") == "Queued", message="team-b's job Queued")
        complete(cluster, running[0])  # one slot frees
        cluster.wait(lambda: len(jobs_of(cluster, "team-b")) == 1, message="team-b's Job")
        time.sleep(0.5)
        assert len(jobs_of(cluster, "team-a")) == 2  # a-002 still waits: team-b went first
        assert phase_in(cluster, "team-a", "a-002") == "Queued"


def test_same_second_creations_start_in_creation_order_across_a_restart(cluster, run_operator):
    """creationTimestamp has whole seconds: jobs created in the same second start in the order
    they were created (not by name), also after the operator restarts."""
    order = ["s-zulu", "s-mike", "s-alpha"]
    with run_operator(LIPSYNC_GPU_BUDGET="1"):
        blocker = the_job(cluster, cluster.create(CRS, lipsyncjob("blocker")))
        time.sleep(1.05 - time.time() % 1)  # the start of a second
        crs = [cluster.create(CRS, lipsyncjob(n)) for n in order]
        assert len({c["metadata"]["creationTimestamp"] for c in crs}) == 1
        for n in order:
            wait_status(cluster, n, phase="Queued")
    with run_operator(LIPSYNC_GPU_BUDGET="1"):
        prev = blocker
        for n, cr in zip(order, crs):
            complete(cluster, prev)
            prev = the_job(cluster, cr)
            time.sleep(0.3)
            assert len([j for j in cluster.list(JOBS, NS)]) == order.index(n) + 2  # only n's Job was added


# ---------------------------------------------------------------------------- deletion, Kueue, replicas
def test_delete_with_no_operator_running_does_not_hang(cluster, run_operator):
    """No finalizer: a LipSyncJob (or its namespace) is deleted at once, operator or not (its Job's
    ownerReference lets the garbage collector remove the Job); an operator that comes back
    removes what the garbage collector would have."""
    with run_operator():
        cr = cluster.create(CRS, lipsyncjob("bye"))
        job = the_job(cluster, cr)
        start_pod(cluster, job)
        wait_status(cluster, "bye", phase="Running")
        assert not cluster.get(CRS, NS, "bye")["metadata"].get("finalizers")
    assert cluster.delete(CRS, NS, "bye") == 200
    assert cluster.get(CRS, NS, "bye") is None  # gone at once, nothing waits for an operator
    with run_operator():
        cluster.wait(lambda: cluster.get(JOBS, NS, job["metadata"]["name"]) is None, message="the orphaned Job deleted")


def test_an_older_operators_finalizer_is_removed(cluster, run_operator):
    """Objects made under an operator that used the lipsync.dev/cleanup finalizer lose it."""
    obj = lipsyncjob("legacy")
    obj["metadata"]["finalizers"] = ["lipsync.dev/cleanup"]
    cluster.create(CRS, obj)
    with run_operator():
        cluster.wait(lambda: not cluster.get(CRS, NS, "legacy")["metadata"].get("finalizers"),
                     message="the finalizer removed")
    assert cluster.delete(CRS, NS, "legacy") == 200 and cluster.get(CRS, NS, "legacy") is None


def env_of(job: dict) -> dict:
    (c,) = job["spec"]["template"]["spec"]["containers"]
    return json.loads(next(e["value"] for e in c["env"] if e["name"] == "LIPSYNC_JOB"))


def test_kueue_edit_while_suspended_is_taken_then_refused_once_admitted(cluster, run_operator):
    from lipsync_operator.jobs import job_name

    with run_operator(LIPSYNC_KUEUE_QUEUE="gpu-queue"):
        cr = cluster.create(CRS, lipsyncjob("kq"))
        first = the_job(cluster, cr)
        wait_status(cluster, "kq", phase="Queued", reason="WaitingForKueue")
        cluster.patch(CRS, NS, "kq", {"spec": {"output": {"uri": "s3://media/out/kq-edited"}}})
        st = wait_status(cluster, "kq", observedGeneration=2, jobName=job_name("kq", cr["metadata"]["uid"], 2))
        assert st["phase"] == "Queued" and conds(st)["Stalled"][0] == "False" and "immutable" not in st["message"]
        cluster.wait(lambda: cluster.get(JOBS, NS, first["metadata"]["name"]) is None, message="the old Job deleted")
        (second,) = cluster.list(JOBS, NS)
        assert second["spec"]["suspend"] is True
        assert env_of(second)["spec"]["output"]["uri"] == "s3://media/out/kq-edited"
        # Kueue admits it; it starts; an edit now is refused.
        cluster.patch(JOBS, NS, second["metadata"]["name"], {"spec": {"suspend": False}})
        start_pod(cluster, second)
        wait_status(cluster, "kq", phase="Running")
        cluster.patch(CRS, NS, "kq", {"spec": {"output": {"uri": "s3://media/out/kq-again"}}})
        st = wait_status(cluster, "kq", observedGeneration=3)
        assert conds(st)["Stalled"] == ("True", "SpecImmutable")
        time.sleep(0.3)
        assert [j["metadata"]["name"] for j in cluster.list(JOBS, NS)] == [second["metadata"]["name"]]


def test_two_operators_at_once_one_acts(cluster, run_operator):
    """Two replicas (leader election through a Lease): every Event once, one Job per LipSyncJob,
    the budget held; when the leader stops, the other takes over."""
    env = {"LIPSYNC_LEASE_NAMESPACE": "lipsync-system", "LIPSYNC_LEASE_SECONDS": "2", "LIPSYNC_GPU_BUDGET": "1",
           "LIPSYNC_RESYNC_SECONDS": "1"}
    first, second = run_operator(**env), run_operator(**env)
    first.__enter__()
    try:
        with second:
            crs = [cluster.create(CRS, lipsyncjob(f"two-{i}")) for i in range(3)]
            job0 = the_job(cluster, crs[0])
            for cr in crs[1:]:
                wait_status(cluster, cr["metadata"]["name"], phase="Queued")
            complete(cluster, job0)
            wait_status(cluster, "two-0", phase="Succeeded")
            job1 = the_job(cluster, crs[1])
            time.sleep(0.5)
            assert len(unfinished(cluster)) == 1
            first.__exit__(None, None, None)  # one replica goes (the leader or not)
            first = None
            complete(cluster, job1)
            wait_status(cluster, "two-1", phase="Succeeded", timeout=20)
            the_job(cluster, crs[2])
            time.sleep(0.5)
    finally:
        if first is not None:
            first.__exit__(None, None, None)
    assert job_posts(cluster) == 3 and len(cluster.list(JOBS, NS)) == 3
    events = collections.Counter(
        (e["involvedObject"]["name"], e["reason"]) for e in cluster.bodies("POST", f"/api/v1/namespaces/{NS}/events"))
    assert events and max(events.values()) == 1, events
    assert events["two-0", "JobCreated"] == events["two-1", "JobCreated"] == events["two-2", "JobCreated"] == 1
    lease = cluster.get("coordination.k8s.io/v1/leases", "lipsync-system", "lipsync-operator")
    assert lease["spec"]["holderIdentity"]


def unfinished(cluster) -> list[dict]:
    done = ("Complete", "Failed")
    return [j for j in cluster.list(JOBS, NS)
            if not any(c["type"] in done and c["status"] == "True" for c in (j.get("status") or {}).get("conditions") or [])]
