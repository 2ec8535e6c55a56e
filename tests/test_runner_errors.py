"""Bad input: a clear message naming the stage, a reason code, an exit code, nothing half-written.

These run the real `lipsync` CLI in a subprocess, as a user (or a pod) would.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from lipsync.errors import REASONS

from .media import face_and_empty, job_file, run_cli

@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    d = face_and_empty(tmp_path_factory.mktemp("bad-media"))
    data = (d / "face.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (d / "garbage.mp4").write_bytes(os.urandom(20000))
    return d


def lipsync(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    extra = ("--log-format", "json") if args[0] == "run" else ()
    return run_cli(*args, *extra, env={"LIPSYNC_HTTP_RETRY_SECONDS": "1", **(env or {})}, timeout=120)


def failure(proc: subprocess.CompletedProcess) -> dict:
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    failed = [x for x in lines if x.get("event") == "failed"]
    assert failed, proc.stdout + proc.stderr
    return failed[-1]


def expect(proc: subprocess.CompletedProcess, reason: str, stage: str, *words: str) -> dict:
    assert proc.returncode == REASONS[reason].exit_code, proc.stdout + proc.stderr
    f = failure(proc)
    assert f["reason"] == reason and f["stage"] == stage
    for w in words:
        assert w in f["msg"], f["msg"]
    return f


def run_job_file(tmp_path: Path, **spec) -> subprocess.CompletedProcess:
    return lipsync("run", str(job_file(tmp_path, **spec)))


def assert_nothing_written(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("name,reason,words", [
    ("truncated.mp4", "InvalidMedia", ("spec.video", "cannot be read as media")),
    ("garbage.mp4", "InvalidMedia", ("spec.video",)),
])
def test_corrupt_video(media, tmp_path, name, reason, words):
    proc = run_job_file(tmp_path, video=str(media / name), audio=str(media / "speech.wav"))
    expect(proc, reason, "probe", *words)
    assert_nothing_written(tmp_path)


def test_video_without_video_stream(media, tmp_path):
    proc = run_job_file(tmp_path, video=str(media / "speech.wav"), audio=str(media / "speech.wav"))
    expect(proc, "NoVideoStream", "probe", "spec.video", "no video stream")
    assert_nothing_written(tmp_path)


def test_audio_without_audio_stream(media, tmp_path):
    proc = run_job_file(tmp_path, video=str(media / "face.mp4"), audio=str(media / "face.mp4"))
    expect(proc, "NoAudioStream", "probe", "spec.audio", "no audio stream")
    assert_nothing_written(tmp_path)


def test_no_face_anywhere(media, tmp_path):
    proc = run_job_file(tmp_path, video=str(media / "noface.mp4"), audio=str(media / "speech.wav"))
    expect(proc, "NoFaceFound", "track", "no face was found")
    assert_nothing_written(tmp_path)


def test_missing_local_file(media, tmp_path):
    proc = run_job_file(tmp_path, video=str(tmp_path / "nope.mp4"), audio=str(media / "speech.wav"))
    expect(proc, "InputNotFound", "fetch", "spec.video", "nope.mp4", "does not exist")
    assert_nothing_written(tmp_path)


def test_a_missing_relative_path_is_named_in_full(media, tmp_path):
    from .media import job_file, run_cli

    folder = tmp_path / "jobs"
    folder.mkdir()
    job = job_file(folder, name="rel", video="../clips/missing.mp4", audio=str(media / "speech.wav"))
    proc = run_cli("run", str(job), cwd=media)  # run from elsewhere: the path is read from the job's folder
    assert proc.returncode == 11
    assert repr(str(tmp_path / "clips" / "missing.mp4")) in proc.stderr + proc.stdout


@pytest.fixture
def http_server(media):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(media))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.slow
def test_http_inputs_are_fetched(media, tmp_path, http_server):
    proc = run_job_file(tmp_path, video=f"{http_server}/face.mp4", audio=f"{http_server}/speech.wav")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "out" / "output.mp4").stat().st_size > 0
    # The checksum hashed while streaming is the file's own: re-runs and overwrites rely on it.
    identity = json.loads((tmp_path / "out" / "metrics.json").read_text())["identity"]
    assert identity["inputs"]["video"] == hashlib.sha256((media / "face.mp4").read_bytes()).hexdigest()


def test_http_404(media, tmp_path, http_server):
    proc = run_job_file(tmp_path, video=f"{http_server}/missing.mp4", audio=str(media / "speech.wav"))
    expect(proc, "InputNotFound", "fetch", "spec.video", "HTTP 404")


def test_unreachable_host_is_transient(media, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run_job_file(tmp_path, video=f"http://127.0.0.1:{port}/face.mp4", audio=str(media / "speech.wav"))
    f = expect(proc, "StorageUnavailable", "fetch", "unreachable")
    assert REASONS[f["reason"]].transient


def test_invalid_spec_names_the_field(media, tmp_path):
    proc = run_job_file(tmp_path, video=str(media / "face.mp4"), audio=str(media / "speech.wav"), fase={"x": 1})
    expect(proc, "InvalidSpec", "validate", "spec.fase", "unknown field")


def test_validate_command(media, tmp_path):
    good = job_file(tmp_path, name="good", video="a.mp4", audio="b.wav")
    bad = job_file(tmp_path / "..", name="bad-job", video="a.mp4", audio="b.wav", model={"name": "wav2lip"})
    ok = lipsync("validate", str(good))
    assert ok.returncode == 0 and "ok" in ok.stdout
    no = lipsync("validate", str(good), str(bad))
    assert no.returncode == REASONS["InvalidSpec"].exit_code
    assert "needs spec.model.weights" in no.stderr


@pytest.mark.slow
def test_result_file_for_the_operator(media, tmp_path):
    result = tmp_path / "result.json"
    job = job_file(tmp_path, video=str(media / "face.mp4"), audio=str(media / "speech.wav"))
    import yaml

    doc = yaml.safe_load(job.read_text())
    proc = lipsync("run", "--job-env", "LIPSYNC_JOB", env={"LIPSYNC_JOB": json.dumps(doc), "LIPSYNC_RESULT_FILE": str(result)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = json.loads(result.read_text())
    assert got["phase"] == "Succeeded" and got["artifacts"]["video"].endswith("output.mp4")
    progress = [json.loads(x) for x in proc.stdout.splitlines() if '"progress"' in x]
    assert progress and progress[-1]["progress"] == 100
    assert [p["progress"] for p in progress] == sorted(p["progress"] for p in progress)


@pytest.mark.parametrize("name,value,stage", [
    ("LIPSYNC_FRAME_BUFFER_MB", "lots", "render"),
    ("LIPSYNC_DECODER_THREADS", "0", "render"),
    ("LIPSYNC_MAX_INPUT_BYTES", "20G", "fetch"),
])
def test_a_bad_tuning_variable_is_invalid_spec_not_a_retried_internal_error(media, tmp_path, name, value, stage):
    proc = lipsync("run", str(job_file(tmp_path, video=str(media / "face.mp4"), audio=str(media / "speech.wav"))),
                   env={name: value})
    expect(proc, "InvalidSpec", stage, f"{name}={value!r}", "runner's environment")
    assert_nothing_written(tmp_path)
