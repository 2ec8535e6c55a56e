"""The contract between the operator and the runner, exercised across both for real.

The operator's Job manifest is taken as the cluster would run it: the container's args and env
are executed with the real `lipsync` CLI against the S3 test server (in-cluster specs take remote
URIs only); what the runner leaves behind (exit code, termination message, JSON progress lines)
is then read back through the operator's own status functions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lipsync.errors import REASONS
from lipsync.io import s3
from lipsync.spec import parse_job
from lipsync_operator import jobs, status
from lipsync_operator.settings import Settings

from . import s3server
from .media import face_and_empty, run_cli

OUT = "s3://lipsync/renders/promo"

pytestmark = pytest.mark.slow  # renders or scores whole clips: `-m "not slow"` skips them


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    return face_and_empty(tmp_path_factory.mktemp("contract"), text="Hello operator.")


@pytest.fixture
def bucket(media, tmp_path, monkeypatch) -> str:
    """The S3 test server holding the media under s3://lipsync/inputs/; its env is the pod's envFrom."""
    for _ in s3server.running(tmp_path, monkeypatch):
        client = s3.client_from_env()
        for name in ("face.mp4", "noface.mp4", "speech.wav"):
            client.fput_object(s3server.BUCKET, f"inputs/{name}", str(media / name))
        yield "s3://lipsync/inputs"


def keys(prefix: str) -> list[str]:
    return sorted(o.object_name for o in s3.client_from_env().list_objects(s3server.BUCKET, prefix, recursive=True))


def cluster_job(tmp_path: Path, video: str, audio: str, out: str = OUT, **spec) -> dict:
    doc = {"apiVersion": "lipsync.dev/v1alpha1", "kind": "LipSyncJob",
           "metadata": {"name": "promo", "namespace": "media", "uid": "1f0c-uid"},
           "spec": {"video": video, "audio": audio, "output": {"uri": out, "preset": "ultrafast"}, **spec}}
    return jobs.job_manifest(parse_job(doc), SETTINGS)


# The chart's defaults: storage request/limit, scratch sizeLimit, download limits.
SETTINGS = Settings(runner_ephemeral_storage="64Gi", scratch_size_limit="60Gi", max_input_bytes=20 * 1024**3,
                    max_weights_bytes=20 * 1024**3, download_deadline_seconds=3600)


def run_pod(manifest: dict, tmp_path: Path, index: int | None = None) -> tuple[dict, str]:
    """Run the Job's container command locally; return the pod status a kubelet would report.

    As the pod runs it: the root filesystem read-only, so the one writable place is the /tmp
    volume (here a folder of its own, the manifest's paths under /tmp mapped into it), and the
    working directory (the image's WORKDIR) is left untouched.
    """
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    (mount,) = container["volumeMounts"]
    (volume,) = manifest["spec"]["template"]["spec"]["volumes"]
    assert volume["name"] == mount["name"] and volume["emptyDir"]["sizeLimit"] == "60Gi"
    assert container["resources"]["limits"]["ephemeral-storage"] == "64Gi"
    assert container["terminationMessagePath"] == container_env(container)["LIPSYNC_RESULT_FILE"]
    tmp_path.mkdir(parents=True, exist_ok=True)
    scratch, workdir = tmp_path / "volume-tmp", tmp_path / "workdir"
    scratch.mkdir(exist_ok=True)
    workdir.mkdir(exist_ok=True)
    result = tmp_path / "termination-log"
    env = {k: str(scratch) + v[len(mount["mountPath"]):] if v.startswith(mount["mountPath"]) else v
           for k, v in container_env(container).items()}
    env["LIPSYNC_RESULT_FILE"] = str(result)
    if index is not None:  # an Indexed Job's pod: the Job controller sets its index
        assert manifest["spec"]["completionMode"] == "Indexed"
        env["JOB_COMPLETION_INDEX"] = str(index)
    args = container["command"]
    assert args[0] == "lipsync"
    proc = run_cli(*args[1:], env=env, cwd=workdir)
    assert list(workdir.iterdir()) == [], "the runner wrote outside its volume"
    pod = {"metadata": {"annotations": {jobs.COMPLETION_INDEX: str(index)} if index is not None else {}},
           "status": {
        "phase": "Succeeded" if proc.returncode == 0 else "Failed",
        "containerStatuses": [{"name": jobs.CONTAINER, "state": {"terminated": {
            "exitCode": proc.returncode, "message": result.read_text() if result.exists() else "",
            "finishedAt": "2026-11-25T10:00:00Z"}}}]}}
    return pod, proc.stdout


def container_env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def finished_job(manifest: dict, condition: str, reason: str | None = None) -> dict:
    cond = {"type": condition, "status": "True", "lastTransitionTime": "2026-11-25T10:00:01Z"}
    if reason:
        cond["reason"] = reason
    return {**manifest, "status": {"startTime": "2026-11-25T09:59:00Z", "conditions": [cond],
                                   "completionTime": "2026-11-25T10:00:01Z"}}


def test_success_reaches_status_with_artifacts_and_progress(bucket, tmp_path):
    manifest = cluster_job(tmp_path, f"{bucket}/face.mp4", f"{bucket}/speech.wav")
    pod, stdout = run_pod(manifest, tmp_path)
    assert pod["status"]["phase"] == "Succeeded"
    assert status.last_progress(stdout) == (100, "publish")
    st = status.from_job(None, finished_job(manifest, "Complete"), [pod], generation=1, now="2026-11-25T10:00:02Z")
    assert st["phase"] == "Succeeded" and st["progress"] == 100
    assert st["artifacts"]["video"] == f"{OUT}/output.mp4"
    assert "renders/promo/output.mp4" in keys("renders/")
    ready = {c["type"]: c["status"] for c in st["conditions"]}
    assert ready["Ready"] == "True" and ready.get("Stalled", "False") == "False"


def test_indexed_pods_render_shares_then_the_stitch_job_publishes(bucket, tmp_path):
    """spec.parallelism 2: each pod of the Indexed Job (JOB_COMPLETION_INDEX set) renders its share
    and publishes nothing; the stitch Job, made as the operator makes it (from the render Job's own
    LIPSYNC_JOB), reuses every chunk and publishes; the operator's status reads all of it."""
    render = cluster_job(tmp_path, f"{bucket}/face.mp4", f"{bucket}/speech.wav", parallelism=2,
                         render={"chunkSeconds": 1})
    assert render["spec"]["completions"] == 2 and render["spec"]["completionMode"] == "Indexed"
    pods = []
    for index in (1, 0):  # out of order
        pod, stdout = run_pod(render, tmp_path / f"index-{index}", index)
        assert pod["status"]["phase"] == "Succeeded", stdout[-3000:]
        assert json.loads(pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"])["message"] \
            == "chunks rendered"
        assert not [k for k in keys("renders/") if not k.startswith("renders/promo/.")], "a shard published"
        pods.append(pod)
    running = {**render, "status": {"active": 0, "succeeded": 2, "completedIndexes": "0-1"}}
    assert status.indices_done(running, pods, 2) == {0, 1}
    stitch = jobs.job_manifest(parse_job(jobs.runner_document_of(render)), SETTINGS, step=jobs.STITCH)
    assert "--shard" not in stitch["spec"]["template"]["spec"]["containers"][0]["command"]
    spod, stdout = run_pod(stitch, tmp_path / "stitch")
    assert spod["status"]["phase"] == "Succeeded", stdout[-3000:]
    metrics = json.loads(s3.client_from_env().get_object(s3server.BUCKET, "renders/promo/metrics.json").read())
    assert metrics["chunks"]["rendered"] == 0 and metrics["chunks"]["reused"] == metrics["chunks"]["count"] >= 2
    st = status.from_indexed(None, finished_job(render, "Complete"), pods, total=2, generation=1,
                             now="2026-11-25T10:00:02Z", render_name=render["metadata"]["name"],
                             stitch=finished_job(stitch, "Complete"), stitch_pods=[spod],
                             stitch_name=stitch["metadata"]["name"])
    assert st["phase"] == "Succeeded" and st["indices"] == {"done": 2, "total": 2}
    assert st["artifacts"]["video"] == f"{OUT}/output.mp4" and "renders/promo/output.mp4" in keys("renders/")


def test_permanent_failure_fails_the_job_with_the_runners_reason(bucket, tmp_path):
    manifest = cluster_job(tmp_path, f"{bucket}/noface.mp4", f"{bucket}/speech.wav")
    pod, _ = run_pod(manifest, tmp_path)
    code = pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"]
    assert code == REASONS["NoFaceFound"].exit_code
    # The Job's podFailurePolicy fails the Job at once on this code (no retry on a GPU).
    rules = manifest["spec"]["podFailurePolicy"]["rules"]
    fail_now = [r for r in rules if r["action"] == "FailJob"]
    assert any(code in r["onExitCodes"]["values"] for r in fail_now if "onExitCodes" in r)
    st = status.from_job(None, finished_job(manifest, "Failed", "PodFailurePolicy"), [pod], generation=1,
                         now="2026-11-25T10:00:02Z")
    assert st["phase"] == "Failed" and st["reason"] == "NoFaceFound"
    assert "no face was found" in st["message"]
    stalled = {c["type"]: c for c in st["conditions"]}["Stalled"]
    assert stalled["status"] == "True" and stalled["reason"] == "NoFaceFound"
    assert keys("renders/") == []


def test_result_message_fits_a_termination_message(bucket, tmp_path):
    manifest = cluster_job(tmp_path, f"{bucket}/face.mp4", f"{bucket}/speech.wav")
    pod, _ = run_pod(manifest, tmp_path)
    message = pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
    assert len(message.encode()) <= 4096  # the kubelet truncates termination messages beyond 4 KiB
    assert json.loads(message)["phase"] == "Succeeded"


def test_long_output_uri_termination_message_fits_and_parses(bucket, tmp_path):
    """The longest output.uri the schema takes: all five artifact URIs reach status intact."""
    out = "s3://lipsync/renders/" + "x" * (512 - len("s3://lipsync/renders/"))
    manifest = cluster_job(tmp_path, f"{bucket}/face.mp4", f"{bucket}/speech.wav", out=out)
    pod, _ = run_pod(manifest, tmp_path)
    message = pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
    assert len(message.encode()) <= 4096
    assert json.loads(message)["artifacts"]["video"] == f"{out}/output.mp4"
    st = status.from_job(None, finished_job(manifest, "Complete"), [pod], generation=1, now="2026-11-25T10:00:02Z")
    assert st["artifacts"] == {"video": f"{out}/output.mp4", "preview": f"{out}/preview.jpg",
                               "track": f"{out}/track.json", "metrics": f"{out}/metrics.json", "log": f"{out}/run.log"}


def test_a_longer_output_uri_is_refused_up_front():
    from lipsync.errors import InvalidSpec

    doc = {"apiVersion": "lipsync.dev/v1alpha1", "kind": "LipSyncJob", "metadata": {"name": "p"},
           "spec": {"video": "s3://lipsync/v.mp4", "audio": "s3://lipsync/a.wav",
                    "output": {"uri": "s3://lipsync/" + "y" * 1000}}}
    with pytest.raises(InvalidSpec, match="spec.output.uri.*512"):
        parse_job(doc)


def test_result_text_always_fits_and_parses():
    from lipsync.cli import result_text

    out = "s3://lipsync/" + "z" * 499
    artifacts = {k: f"{out}/{n}" for k, n in (("video", "output.mp4"), ("preview", "preview.jpg"),
                                              ("track", "track.json"), ("metrics", "metrics.json"),
                                              ("log", "run.log"))}
    for message in ("é😀" * 5000, "x" * 100_000, 'quote " and \\ backslash \n' * 900, ""):
        for arts in (artifacts, {k: v + "/" + "w" * 3000 for k, v in artifacts.items()}):
            text = result_text({"phase": "Failed", "reason": "ModelFailed", "message": message, "artifacts": arts})
            assert len(text.encode()) <= 4096
            doc = json.loads(text)
            assert doc["phase"] == "Failed" and doc["reason"] == "ModelFailed"
            if arts is artifacts:
                assert doc["artifacts"] == artifacts  # kept whole; the message gives way
                if message:  # ... but only as much as needed: its end is kept
                    assert doc["message"] and message.endswith(doc["message"].removeprefix("..."))
                    assert len(text.encode()) > 4096 - 64
