"""Many teams, one operator: what a LipSyncJob's author can and cannot reach (docs/install.md,
"Security model"). The real operator on the emulated API server; where a render matters, the
Job's container is run for real (the `lipsync` CLI, as in tests/test_contract.py) against the S3
test server, and what it leaves behind goes back through the API as the kubelet would report it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kubesim import CRS, JOBS, NS, end_pod, finish_job, lipsyncjob, start_pod

from lipsync.io import s3
from lipsync_operator.jobs import job_name
from tests import s3server
from tests.media import clip, run_cli, speech

# A program that prints its environment, then fails. (Reading /proc/<runner>/environ is blocked by
# the runner making itself non-dumpable, which root, as these tests run, bypasses: see
# tests/test_command_model.py for that part.)
SNOOP = ["/bin/sh", "-c", "env; echo snooped; exit 3"]


def status_of(cluster, name):
    return (cluster.get(CRS, NS, name) or {}).get("status") or {}


def wait_status(cluster, name, timeout=20, **want):
    def check():
        st = status_of(cluster, name)
        return st if all(st.get(k) == v for k, v in want.items()) else None
    return cluster.wait(check, timeout=timeout, message=f"{name} status {want}")


def events_about(cluster, name):
    return [e for e in cluster.bodies("POST", f"/api/v1/namespaces/{NS}/events")
            if e["involvedObject"]["name"] == name]


@pytest.fixture
def s3_server(tmp_path, monkeypatch):
    yield from s3server.running(tmp_path, monkeypatch)


@pytest.fixture
def inputs(s3_server, tmp_path) -> dict[str, str]:
    local = {"video": clip(tmp_path / "face.mp4", seconds=1.0), "audio": speech(tmp_path / "speech.wav")}
    client = s3.client_from_env()
    for path in local.values():
        client.fput_object(s3server.BUCKET, f"inputs/{path.name}", str(path))
    return {"video": "s3://lipsync/inputs/face.mp4", "audio": "s3://lipsync/inputs/speech.wav"}


def run_container(job: dict, tmp_path: Path) -> tuple[subprocess.CompletedProcess, str]:
    """The Job's runner container, run by the real CLI with the S3 Secret as envFrom would give it."""
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    result = tmp_path / "termination-log"
    env["LIPSYNC_RESULT_FILE"] = str(result)
    assert container["command"][0] == "lipsync"
    proc = run_cli(*container["command"][1:], env=env)  # the test process's env holds the S3 secret (envFrom)
    return proc, result.read_text() if result.exists() else ""


def test_command_model_is_refused_where_the_operator_does_not_allow_it(cluster, run_operator):
    with run_operator():
        cluster.create(CRS, lipsyncjob("snoop", model={"name": "command", "command": SNOOP}))
        st = wait_status(cluster, "snoop", phase="Failed")
        assert st["reason"] == "NotAllowed"
        assert "spec.model.name" in st["message"] and "commandPolicy" in st["message"]
    assert cluster.list(JOBS, NS) == []


def test_only_the_allowed_programs_in_the_allowed_namespaces(cluster, run_operator):
    policy = json.dumps({NS: ["/opt/musetalk/run"], "research": ["*"]})
    with run_operator(LIPSYNC_COMMAND_POLICY=policy):
        cluster.create(CRS, lipsyncjob("other-program", model={"name": "command", "command": SNOOP}))
        cluster.create(CRS, lipsyncjob("allowed", model={"name": "command", "command": ["/opt/musetalk/run", "{video}"]}))
        st = wait_status(cluster, "other-program", phase="Failed")
        assert st["reason"] == "NotAllowed" and "'/bin/sh'" in st["message"] and "/opt/musetalk/run" in st["message"]
        cluster.wait(lambda: cluster.list(JOBS, NS), message="the allowed program's Job")
        (job,) = cluster.list(JOBS, NS)
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert json.loads(env["LIPSYNC_ALLOW_COMMANDS"]) == ["/opt/musetalk/run"]
    assert env["LIPSYNC_IN_CLUSTER"] == "1"


def test_allowed_command_sees_no_secret_and_none_reaches_status_or_events(cluster, run_operator, inputs, tmp_path):
    secret = s3server.SECRET_KEY
    with run_operator(LIPSYNC_COMMAND_POLICY=json.dumps({NS: ["/bin/sh"]})):
        cr = cluster.create(CRS, lipsyncjob("snoop", model={"name": "command", "command": SNOOP},
                                            output={"uri": "s3://lipsync/renders/snoop"}, **inputs))
        name = job_name("snoop", cr["metadata"]["uid"])
        job = cluster.wait(lambda: cluster.get(JOBS, NS, name), message="the Job")
        pod = start_pod(cluster, job)
        wait_status(cluster, "snoop", phase="Running")
        proc, message = run_container(job, tmp_path)
        assert proc.returncode == 21, proc.stdout + proc.stderr  # ModelFailed
        assert "snooped" in proc.stdout, "the program ran and its output is in the pod's log"
        assert "PATH=" in proc.stdout
        cluster.logs[NS, pod["metadata"]["name"]] = proc.stdout
        end_pod(cluster, pod, exit_code=proc.returncode, message=message)
        finish_job(cluster, job, ok=False, reason="PodFailurePolicy", message="exit code 21")
        st = wait_status(cluster, "snoop", phase="Failed")
        events = cluster.wait(lambda: [e for e in events_about(cluster, "snoop") if e["type"] == "Warning"],
                              message="the Failed Event")
    assert st["reason"] == "ModelFailed"
    assert "exited with code 3" in st["message"]
    assert json.loads(message)["reason"] == "ModelFailed"
    # The program got none of the runner's credentials in its environment.
    assert secret not in proc.stdout and s3server.ACCESS_KEY not in proc.stdout and "AWS_" not in proc.stdout
    # And no line of its output reaches what the namespace reads.
    for text in (json.dumps(st), json.dumps(events), message):
        assert secret not in text and "snooped" not in text and "PATH=" not in text


def test_the_runner_refuses_a_command_the_job_env_does_not_allow(tmp_path):
    """Defence in depth: a runner in in-cluster mode applies the policy itself."""
    doc = {"apiVersion": "lipsync.dev/v1alpha1", "kind": "LipSyncJob",
           "metadata": {"name": "x", "namespace": "team-a", "uid": "u"},
           "spec": {"video": "s3://media/v.mp4", "audio": "s3://media/a.wav", "output": {"uri": "s3://media/out"},
                    "model": {"name": "command", "command": [sys.executable, "-c", "print('ran')"]}}}
    result = tmp_path / "result.json"
    for allow, reason in ((None, "NotAllowed"), (["/usr/bin/other"], "NotAllowed")):
        env = {"LIPSYNC_JOB": json.dumps(doc), "LIPSYNC_IN_CLUSTER": "1", "LIPSYNC_RESULT_FILE": str(result)}
        if allow is not None:
            env["LIPSYNC_ALLOW_COMMANDS"] = json.dumps(allow)
        proc = run_cli("run", "--job-env", "LIPSYNC_JOB", "--log-format", "json", env=env)
        assert proc.returncode == 25, proc.stdout + proc.stderr
        assert json.loads(result.read_text())["reason"] == reason
        assert "ran" not in proc.stdout


BAD_LOCATIONS = {
    "local-out": {"output": {"uri": "/tmp/out"}},
    "file-in": {"video": "file:///etc/passwd"},
    "relative-in": {"audio": "speech.wav"},
    "http-in": {"audio": "http://10.0.0.1:8080/speech.wav"},
    "dotdot-out": {"output": {"uri": "s3://media/out/team-a/../team-b"}},
    "dotdot-in": {"video": "s3://media/in/../private/face.mp4"},
}


def test_in_cluster_specs_take_remote_uris_only(cluster, run_operator):
    with run_operator():
        for name, spec in BAD_LOCATIONS.items():
            cluster.create(CRS, lipsyncjob(name, model={"name": "baseline"}, **spec))
        for name, spec in BAD_LOCATIONS.items():
            st = wait_status(cluster, name, phase="Failed")
            assert st["reason"] == "InvalidSpec", (name, st)
            field = "spec.output.uri" if "output" in spec else f"spec.{next(iter(spec))}"
            assert field in st["message"], (name, st["message"])
    assert cluster.list(JOBS, NS) == []


def test_the_runner_in_cluster_mode_refuses_local_paths(tmp_path):
    doc = {"apiVersion": "lipsync.dev/v1alpha1", "kind": "LipSyncJob",
           "metadata": {"name": "x", "namespace": "team-a", "uid": "u"},
           "spec": {"video": "/etc/hostname", "audio": "s3://media/a.wav", "output": {"uri": "s3://media/out"}}}
    result = tmp_path / "result.json"
    env = {"LIPSYNC_JOB": json.dumps(doc), "LIPSYNC_IN_CLUSTER": "1", "LIPSYNC_RESULT_FILE": str(result)}
    proc = run_cli("run", "--job-env", "LIPSYNC_JOB", "--log-format", "json", env=env)
    assert proc.returncode == 10, proc.stdout + proc.stderr
    assert "spec.video" in json.loads(result.read_text())["message"]


def test_a_lipsyncjob_in_an_unmanaged_namespace_gets_no_job(cluster, run_operator):
    """The operator works in LIPSYNC_JOB_NAMESPACES only (here: renders); the cluster fixture also
    checks that it made no request outside them."""
    with run_operator():
        cluster.create(CRS, lipsyncjob("intruder", namespace="kube-system", model={"name": "baseline"}))
        cluster.create(CRS, lipsyncjob("elsewhere", namespace="team-b", model={"name": "baseline"}))
        cluster.create(CRS, lipsyncjob("ours", model={"name": "baseline"}))
        cluster.wait(lambda: cluster.list(JOBS, NS), message="the managed namespace's Job")
        import time

        time.sleep(1.0)  # time enough for a cluster-wide operator to have acted
        for ns, name in (("kube-system", "intruder"), ("team-b", "elsewhere")):
            assert cluster.list(JOBS, ns) == []
            assert (cluster.get(CRS, ns, name) or {}).get("status") is None  # left alone
            assert not (cluster.get(CRS, ns, name) or {}).get("metadata", {}).get("finalizers")


def test_prefix_policy_refuses_a_cross_namespace_overwrite(cluster, run_operator):
    """With an output prefix per namespace, no field of a job (overwrite: true included) reaches
    another namespace's renders."""
    with run_operator(LIPSYNC_OUTPUT_PREFIX="s3://media/out/{namespace}/"):
        cluster.create(CRS, lipsyncjob("raid", model={"name": "baseline"},
                                       output={"uri": "s3://media/out/team-b/promo", "overwrite": True}))
        cluster.create(CRS, lipsyncjob("lookalike", model={"name": "baseline"},
                                       output={"uri": "s3://media/out/renders-b/promo"}))
        cluster.create(CRS, lipsyncjob("own", model={"name": "baseline"},
                                       output={"uri": "s3://media/out/renders/promo", "overwrite": True}))
        for name in ("raid", "lookalike"):
            st = wait_status(cluster, name, phase="Failed")
            assert st["reason"] == "NotAllowed" and "s3://media/out/renders/" in st["message"], st
        (job,) = cluster.wait(lambda: cluster.list(JOBS, NS), message="the own-prefix Job")
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LIPSYNC_OUTPUT_PREFIX"] == "s3://media/out/renders/"
    assert job["metadata"]["ownerReferences"][0]["name"] == "own"


def test_the_runner_applies_the_prefix_policy_too(tmp_path):
    doc = {"apiVersion": "lipsync.dev/v1alpha1", "kind": "LipSyncJob",
           "metadata": {"name": "x", "namespace": "team-a", "uid": "u"},
           "spec": {"video": "s3://media/v.mp4", "audio": "s3://media/a.wav",
                    "output": {"uri": "s3://media/out/team-b/x", "overwrite": True}}}
    result = tmp_path / "result.json"
    env = {"LIPSYNC_JOB": json.dumps(doc), "LIPSYNC_IN_CLUSTER": "1", "LIPSYNC_RESULT_FILE": str(result),
           "LIPSYNC_OUTPUT_PREFIX": "s3://media/out/team-a/"}
    proc = run_cli("run", "--job-env", "LIPSYNC_JOB", "--log-format", "json", env=env)
    assert proc.returncode == 25, proc.stdout + proc.stderr
    assert json.loads(result.read_text())["reason"] == "NotAllowed"


def forged_job(owner: dict, name: str, parallelism: int) -> dict:
    """A Job anyone who may create Jobs in the namespace can make: our labels, a controller
    reference to a LipSyncJob of theirs, as wide as they like, suspended (it costs them nothing)."""
    from lipsync_operator.jobs import GPU_LABEL, MANAGED_BY, MANAGED_BY_LABEL, UID_LABEL

    uid = owner["metadata"]["uid"]
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": NS,
                         "labels": {MANAGED_BY_LABEL: MANAGED_BY, GPU_LABEL: "true", UID_LABEL: uid},
                         "ownerReferences": [{"apiVersion": "lipsync.dev/v1alpha1", "kind": "LipSyncJob",
                                              "name": owner["metadata"]["name"], "uid": uid, "controller": True}]},
            "spec": {"parallelism": parallelism, "completions": parallelism, "suspend": True,
                     "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "x", "image": "busybox"}]}}}}


WAV2LIP = {"name": "wav2lip", "weights": "s3://models/w.pth"}


def test_a_job_labelled_as_ours_by_someone_else_takes_no_gpu_slot(cluster, run_operator):
    with run_operator(LIPSYNC_GPU_BUDGET="2", LIPSYNC_RESYNC_SECONDS="0.5"):
        decoy = cluster.create(CRS, lipsyncjob("decoy"))  # baseline: needs no GPU, takes no slot
        cluster.create(JOBS, forged_job(decoy, "hog", 1000))
        cluster.create(CRS, lipsyncjob("team-b", model=WAV2LIP))
        st = wait_status(cluster, "team-b", phase="Pending")  # its Job was made: not Queued behind 1000 slots
    assert st.get("jobName") and st["jobName"] != "hog"
    assert status_of(cluster, "decoy").get("jobName") != "hog"  # nor taken for the decoy's own render


def test_a_job_planted_under_a_queued_jobs_name_is_replaced_when_its_turn_comes(cluster, run_operator):
    with run_operator(LIPSYNC_GPU_BUDGET="1", LIPSYNC_RESYNC_SECONDS="0.5"):
        first = cluster.create(CRS, lipsyncjob("first", model=WAV2LIP))
        running = cluster.wait(lambda: cluster.get(JOBS, NS, job_name("first", first["metadata"]["uid"])),
                               message="the first Job")
        waiting = cluster.create(CRS, lipsyncjob("waiting", model=WAV2LIP))
        wait_status(cluster, "waiting", phase="Queued")
        planted = job_name("waiting", waiting["metadata"]["uid"])
        cluster.create(JOBS, forged_job(waiting, planted, 50))
        time.sleep(1.5)  # resyncs: the planted Job is not taken for its render, nor counted
        assert status_of(cluster, "waiting")["phase"] == "Queued"
        finish_job(cluster, running, ok=True, succeeded=1)
        # its create meets the planted Job (409): not its spec, so deleted, and the real one made
        st = wait_status(cluster, "waiting", jobName=planted, timeout=20)
        job = cluster.wait(lambda: (j := cluster.get(JOBS, NS, planted)) and not j["spec"].get("suspend") and j,
                           message="the real Job")
    assert st["phase"] in ("Pending", "Running") and job["spec"]["parallelism"] == 1
