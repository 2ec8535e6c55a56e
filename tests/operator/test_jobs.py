"""jobs.py: LipSyncJob + settings → batch/v1 Job manifest (pure)."""

from __future__ import annotations

import json

import pytest

from lipsync.errors import PERMANENT_EXIT_CODES
from lipsync.spec import parse_job
from lipsync_operator.jobs import (
    GPU_LABEL, KUEUE_QUEUE_LABEL, RESULT_FILE, job_manifest, job_name, needs_gpu, owner_of, pods_of,
)
from lipsync_operator.settings import Settings

UID = "0b6c3a0e-6f0c-4a4e-9d6e-1b1d2f0e9a11"


def job(model=None, name="talk", **meta):
    return parse_job({
        "apiVersion": "lipsync.dev/v1alpha1", "kind": "LipSyncJob",
        "metadata": {"name": name, "namespace": "renders", "uid": UID, **meta},
        "spec": {"video": "s3://media/a.mp4", "audio": "s3://media/a.wav",
                 "model": model or {"name": "wav2lip", "weights": "s3://models/w.pth"},
                 "output": {"uri": "s3://media/out/a"}},
    })


def container(manifest):
    return manifest["spec"]["template"]["spec"]["containers"][0]


def test_name_is_deterministic_short_and_uid_specific():
    assert job_name("talk", UID) == job_name("talk", UID)
    assert job_name("talk", UID) != job_name("talk", UID.replace("0", "1"))
    long = job_name("a" * 253, UID)
    assert len(long) <= 63 and long.startswith("lipsync-aaa")
    dotted = job_name("my.job-", UID)
    assert "." not in dotted and "--" not in dotted.replace("-job-", "")


def test_gpu_models_get_one_gpu_of_the_configured_resource():
    m = job_manifest(job(), Settings(gpu_resource="amd.com/gpu"))
    assert container(m)["resources"]["limits"] == {"amd.com/gpu": "1"}
    assert m["metadata"]["labels"][GPU_LABEL] == "true"
    base = job_manifest(job({"name": "baseline"}), Settings())
    assert "limits" not in container(base)["resources"]
    assert base["metadata"]["labels"][GPU_LABEL] == "false"
    assert needs_gpu(job({"name": "command", "command": ["x", "{video}"]}))
    assert not needs_gpu(job({"name": "wav2lip", "weights": "s3://models/w.pth", "options": {"device": "cpu"}}))


def test_runner_contract_command_env_and_result_file():
    s = Settings(runner_image="img:1", s3_secret="creds", s3_endpoint="http://minio:9000")
    c = container(job_manifest(job(), s))
    assert c["image"] == "img:1"
    assert c["command"] == ["lipsync", "run", "--job-env", "LIPSYNC_JOB", "--log-format", "json"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["LIPSYNC_RESULT_FILE"] == RESULT_FILE == "/dev/termination-log"
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert c["envFrom"] == [{"secretRef": {"name": "creds"}}]
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    doc = json.loads(env["LIPSYNC_JOB"])
    assert doc["metadata"] == {"name": "talk", "namespace": "renders", "uid": UID}
    assert parse_job(doc).spec == job().spec  # the runner parses exactly what was validated


def test_failure_policy_retries_and_deadlines():
    s = Settings(backoff_limit=5, active_deadline_seconds=600, ttl_seconds_after_finished=60)
    spec = job_manifest(job(), s)["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"]) == (5, 600, 60)
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert rules[1]["action"] == "FailJob"
    assert rules[1]["onExitCodes"] == {"containerName": "runner", "operator": "In",
                                       "values": list(PERMANENT_EXIT_CODES)}
    assert 75 not in PERMANENT_EXIT_CODES and 1 not in PERMANENT_EXIT_CODES
    assert spec["template"]["spec"]["restartPolicy"] == "Never"


def test_scheduling_and_security():
    s = Settings(node_selector={"gpu": "a100"}, tolerations=({"key": "gpu", "operator": "Exists"},),
                 priority_class="batch-low", runner_service_account="renderer",
                 runner_cpu="2", runner_memory="8Gi")
    pod = job_manifest(job(), s)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"gpu": "a100"}
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    assert pod["priorityClassName"] == "batch-low"
    assert pod["serviceAccountName"] == "renderer"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["containers"][0]["resources"]["requests"] == {"cpu": "2", "memory": "8Gi"}
    # the runner sizes its threads and workers to the pod's CPU request, not to the node's cores
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["LIPSYNC_CPUS"]["valueFrom"] == {"resourceFieldRef": {
        "containerName": "runner", "resource": "requests.cpu", "divisor": "1"}}
    bare = job_manifest(job(), Settings())["spec"]["template"]["spec"]
    assert not {"nodeSelector", "tolerations", "priorityClassName", "serviceAccountName"} & set(bare)
    assert "LIPSYNC_CPUS" not in {e["name"] for e in bare["containers"][0]["env"]}  # no request: the node's cores


def test_owner_reference_and_owner_lookup():
    m = job_manifest(job(), Settings())
    assert m["metadata"]["ownerReferences"] == [{
        "apiVersion": "lipsync.dev/v1alpha1", "kind": "LipSyncJob", "name": "talk", "uid": UID,
        "controller": True, "blockOwnerDeletion": True}]
    assert owner_of(m) == ("renders", "talk")
    assert owner_of({"metadata": {"namespace": "x", "ownerReferences": [{"kind": "CronJob", "controller": True}]}}) is None


def test_kueue_suspends_and_labels():
    m = job_manifest(job(), Settings(kueue_queue="gpu"))
    assert m["spec"]["suspend"] is True
    assert m["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "gpu"
    assert "suspend" not in job_manifest(job(), Settings())["spec"]


def test_manifest_needs_cluster_identity():
    with pytest.raises(ValueError):
        job_manifest(parse_job({"metadata": {"name": "x"}, "spec": {
            "video": "a.mp4", "audio": "a.wav", "output": {"uri": "out"}}}), Settings())


def test_pods_of_filters_and_orders():
    pods = [
        {"metadata": {"name": "b", "creationTimestamp": "2026-01-01T00:00:02Z", "labels": {"lipsync.dev/job-uid": UID}}},
        {"metadata": {"name": "other", "labels": {"lipsync.dev/job-uid": "x"}}},
        {"metadata": {"name": "a", "creationTimestamp": "2026-01-01T00:00:01Z", "labels": {"lipsync.dev/job-uid": UID}}},
    ]
    assert [p["metadata"]["name"] for p in pods_of(pods, UID)] == ["a", "b"]


@pytest.mark.parametrize("version", ["1.29.0", "1.30.0", "latest"])
def test_manifest_passes_the_kubernetes_openapi_schema(version):
    """Strict validation (unknown fields are errors) against the published Job schema.

    1.29 is the oldest supported: podReplacementPolicy is beta there, and 1.28's schema requires
    onPodConditions on every podFailurePolicy rule."""
    kv = pytest.importorskip("kubernetes_validate")
    version = kv.latest_version() if version == "latest" else version
    full = Settings(kueue_queue="q", node_selector={"pool": "gpu"}, tolerations=({"key": "gpu", "operator": "Exists"},),
                    priority_class="low", s3_secret="creds", s3_endpoint="http://minio:9000", runner_cpu="1",
                    runner_memory="1Gi", runner_service_account="renderer")
    for settings in (Settings(), full):
        for model in (None, {"name": "baseline"}):
            kv.validate(job_manifest(job(model), settings), version, strict=True)


def test_runner_memory_is_requested_and_limited():
    from lipsync.spec import parse_job
    from lipsync_operator.jobs import job_manifest
    from lipsync_operator.settings import Settings

    doc = {"apiVersion": "lipsync.dev/v1alpha1", "kind": "LipSyncJob",
           "metadata": {"name": "m", "namespace": "n", "uid": "u"},
           "spec": {"video": "s3://media/v.mp4", "audio": "s3://media/a.wav", "output": {"uri": "s3://media/o"}}}
    manifest = job_manifest(parse_job(doc), Settings(runner_memory="8Gi"))
    resources = manifest["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["requests"]["memory"] == resources["limits"]["memory"] == "8Gi"


def test_the_runner_gets_its_namespaces_track_cache():
    env = {e["name"]: e.get("value") for e in container(job_manifest(
        job(), Settings(track_cache="s3://lipsync-tracks/{namespace}/")))["env"]}
    assert env["LIPSYNC_TRACK_CACHE"] == "s3://lipsync-tracks/renders/"
    env = {e["name"] for e in container(job_manifest(job(), Settings()))["env"]}
    assert "LIPSYNC_TRACK_CACHE" not in env  # none configured: the runner keeps none in the cluster
