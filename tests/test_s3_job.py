"""A whole job on S3: s3:// inputs, s3:// output, the real CLI and minio client against moto."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lipsync.errors import REASONS
from lipsync.io import s3

from . import s3server
from .media import RUNNER, clip, job_file, packet_lines, packet_md5, run_cli, speech, stream

pytestmark = pytest.mark.slow  # renders or scores whole clips: `-m "not slow"` skips them

@pytest.fixture
def s3_server(tmp_path, monkeypatch):
    yield from s3server.running(tmp_path, monkeypatch)


@pytest.fixture
def inputs(s3_server, tmp_path) -> dict[str, Path]:
    local = {"video": clip(tmp_path / "face.mp4", seconds=1.0),
             "audio": speech(tmp_path / "speech.m4a", "-c:a", "aac", text="Hello from the bucket.")}
    client = s3.client_from_env()
    for name, path in local.items():
        client.fput_object(s3server.BUCKET, f"inputs/{path.name}", str(path))
    return local


def run(tmp_path: Path, name: str, **extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    result = tmp_path / f"{name}-result.json"
    path = job_file(tmp_path, name=name, video="s3://lipsync/inputs/face.mp4", audio="s3://lipsync/inputs/speech.m4a",
                    output={"uri": "s3://lipsync/renders/promo", "preset": "ultrafast"})
    proc = run_cli("run", str(path), "--log-format", "json", env={"LIPSYNC_RESULT_FILE": str(result), **extra})
    return proc, json.loads(result.read_text())


def keys(prefix: str) -> list[str]:
    return sorted(o.object_name for o in s3.client_from_env().list_objects(s3server.BUCKET, prefix, recursive=True))


def test_job_round_trip_on_s3(s3_server, inputs, tmp_path):
    proc, result = run(tmp_path, "promo")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert result["phase"] == "Succeeded"
    assert result["artifacts"] == {
        "video": "s3://lipsync/renders/promo/output.mp4", "preview": "s3://lipsync/renders/promo/preview.jpg",
        "track": "s3://lipsync/renders/promo/track.json",
        "log": "s3://lipsync/renders/promo/run.log", "metrics": "s3://lipsync/renders/promo/metrics.json"}
    assert keys("renders/") == [f"renders/promo/{n}" for n in ("metrics.json", "output.mp4", "preview.jpg", "run.log",
                                                                   "track.json")]
    out = tmp_path / "downloaded.mp4"
    s3.download("s3://lipsync/renders/promo/output.mp4", out)
    assert packet_md5(out) == packet_md5(inputs["audio"])  # the original speech, copied
    meta = s3.S3Store("s3://lipsync/renders/promo").head("output.mp4")
    assert meta is not None and meta["job"] == "promo" and meta["model"] == "baseline"
    assert len(meta["sha256-video"]) == 64
    assert "lipsync-test-secret" not in proc.stdout + proc.stderr  # credentials never logged

    # The same job again: nothing is rendered or uploaded.
    puts_before = [r for r in s3_server.requests() if r.method in ("PUT", "POST")]
    proc, result = run(tmp_path, "promo")
    assert proc.returncode == 0 and result["message"] == "unchanged"
    assert [r for r in s3_server.requests() if r.method in ("PUT", "POST")] == puts_before

    # Another job pointed at the same output is refused; the render stays as it was.
    proc, result = run(tmp_path, "other-job")
    assert proc.returncode == REASONS["OutputExists"].exit_code
    assert result["reason"] == "OutputExists" and "job 'promo'" in result["message"]
    assert s3.S3Store("s3://lipsync/renders/promo").head("output.mp4")["job"] == "promo"


def test_missing_input_key(s3_server, inputs, tmp_path):
    path = job_file(tmp_path, video="s3://lipsync/inputs/nope.mp4", audio="s3://lipsync/inputs/speech.m4a",
                    output={"uri": "s3://lipsync/renders/x"})
    proc = run_cli("run", str(path), "--log-format", "json")
    assert proc.returncode == REASONS["InputNotFound"].exit_code
    failed = [json.loads(line) for line in proc.stdout.splitlines() if '"failed"' in line]
    assert failed[-1]["stage"] == "fetch" and "s3://lipsync/inputs/nope.mp4" in failed[-1]["msg"]
    assert keys("renders/") == []


def test_server_restarted_in_the_middle_of_the_upload(s3_server, tmp_path):
    """The store dies during the multipart upload of output.mp4 and comes back (empty, as moto
    does): the job still completes, the final key holds the whole file, no temporary key is left."""
    from .media import ffmpeg

    face = clip(tmp_path / "face.mp4", seconds=1.0, width=1280, height=720, face_width=0.3)
    noisy = tmp_path / "noisy.mp4"  # grain: the lossless render is ~25 MB, five 5 MiB parts
    ffmpeg("-i", str(face), "-vf", "noise=alls=12:allf=t", "-c:v", "libx264", "-crf", "10", "-preset", "ultrafast",
           str(noisy))
    audio = speech(tmp_path / "speech.m4a", "-c:a", "aac", text="Still here after the restart.")
    client = s3.client_from_env()
    for path in (noisy, audio):
        client.fput_object(s3server.BUCKET, f"inputs/{path.name}", str(path))
    restarter = s3_server.kill_when(lambda r: "/renders/promo/.tmp/output.mp4" in r.path and "partNumber=" in r.path,
                                    down_for=1.0)
    path = job_file(tmp_path, name="promo", video="s3://lipsync/inputs/noisy.mp4", audio="s3://lipsync/inputs/speech.m4a",
                    timing={"follow": "video"}, output={"uri": "s3://lipsync/renders/promo", "crf": 0, "preset": "ultrafast"})
    proc = run_cli("run", str(path), "--log-format", "json", env={"LIPSYNC_S3_RETRY_SECONDS": "60"})
    restarter.join(timeout=30)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    first = s3_server.incarnations()[0]
    assert any(".tmp/output.mp4" in r.path and "partNumber=" in r.path for r in first), "killed mid-upload"
    assert keys("renders/") == [f"renders/promo/{n}" for n in ("metrics.json", "output.mp4", "preview.jpg", "run.log",
                                                                   "track.json")]
    out = tmp_path / "back.mp4"
    s3.download("s3://lipsync/renders/promo/output.mp4", out)
    assert out.stat().st_size > 10 * 1024 * 1024
    got, original = packet_lines(out), packet_lines(audio)
    assert got and got == original[:len(got)]  # the speech's own packets, cut at the video's end
    assert int(stream(out, "video")["nb_frames"]) == 25


def test_in_a_cluster_no_child_of_the_runner_holds_a_credential(s3_server, inputs, tmp_path):
    """In a cluster (a job's own program may run as the runner's user), the runner keeps the
    credentials to itself: its ffmpeg children and chunk workers start without them (the workers
    get them on stdin), and the render still reads and writes the bucket."""
    import shutil

    seen = tmp_path / "ffmpeg-env.txt"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ffmpeg").write_text(f"#!/bin/sh\nenv >> {seen}\nexec {shutil.which('ffmpeg')} \"$@\"\n")
    (bin_dir / "ffmpeg").chmod(0o755)
    longer = clip(tmp_path / "longer.mp4", seconds=2.4)  # 1 s chunks: 3 of them, for 2 workers
    s3.client_from_env().fput_object(s3server.BUCKET, "inputs/longer.mp4", str(longer))
    path = job_file(tmp_path, name="kept", video="s3://lipsync/inputs/longer.mp4", audio="s3://lipsync/inputs/speech.m4a",
                    timing={"follow": "video"}, output={"uri": "s3://lipsync/renders/kept", "preset": "ultrafast"},
                    render={"chunkSeconds": 1})
    proc = run_cli("run", str(path), "--workers", "2", "--log-format", "json",
                   env={"LIPSYNC_IN_CLUSTER": "1", "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    metrics = json.loads(s3.S3Store("s3://lipsync/renders/kept").get("metrics.json"))
    assert metrics["chunks"]["workers"] == 2  # the workers wrote their chunks to the bucket
    dumped = seen.read_text()
    assert dumped.count("PATH=") >= 4  # ffmpeg ran for the track, each worker's decode and encode, the remux
    assert s3server.SECRET_KEY not in dumped and s3server.ACCESS_KEY not in dumped and "AWS_SECRET" not in dumped


def test_confined_credentials_stay_usable_and_redacted_but_leave_the_environment():
    code = ("import os, subprocess, ctypes; from lipsync import credentials, redact; "
            "os.environ['AWS_SECRET_ACCESS_KEY'] = 'sekrit-value-42'; os.environ['HF_TOKEN'] = 'hf-token-value'; "
            "credentials.confine(); "
            "child = subprocess.run(['env'], capture_output=True, text=True).stdout; "
            "print(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0), 'AWS_SECRET_ACCESS_KEY' in os.environ, "
            "'sekrit' in child or 'hf-token' in child, credentials.get('AWS_SECRET_ACCESS_KEY'), "
            "redact.redact('key sekrit-value-42 and hf-token-value'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(RUNNER)}).stdout.split(maxsplit=4)
    assert out[:4] == ["0", "False", "False", "sekrit-value-42"]  # not dumpable; gone from the environment
    assert "sekrit" not in out[4] and "hf-token" not in out[4]
