"""The CLI's edges, as a user meets them: --version, a misspelt kind in a folder, re-running a
changed job, missing weights, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from lipsync.errors import REASONS

from .media import RUNNER, clip, face_and_empty, job_file, run_cli


def test_version() -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"lipsync {metadata.version('lipsync-operator')}"


def _folder_with_typo(tmp_path: Path) -> Path:
    folder = tmp_path / "jobs"
    folder.mkdir()
    job_file(folder, name="good", video="face.mp4", audio="speech.wav")
    bad = job_file(folder, name="typo", video="face.mp4", audio="speech.wav")
    doc = yaml.safe_load(bad.read_text())
    bad.write_text(yaml.safe_dump({**doc, "kind": "LipsyncJob"}))
    # beside them, documents that are not jobs at all stay skipped
    (folder / "app.yaml").write_text(yaml.safe_dump({"apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
                                                     "metadata": {"name": "x"}}))
    return folder


@pytest.mark.parametrize("command", ["validate", "run"])
def test_kind_typo_in_a_folder_is_an_error_naming_the_file(tmp_path: Path, command: str) -> None:
    folder = _folder_with_typo(tmp_path)
    proc = run_cli(command, str(folder))
    assert proc.returncode == REASONS["InvalidSpec"].exit_code, proc.stdout + proc.stderr
    said = proc.stdout + proc.stderr
    assert str(folder / "typo.yaml") in said and "kind" in said and "LipSyncJob" in said
    assert "app.yaml" not in said
    assert not (folder / "out").exists()  # run: nothing rendered from a folder with a broken job


def test_kind_typo_is_not_taken_for_another_kind() -> None:
    from lipsync.spec import meant_as_job

    assert meant_as_job({"kind": "LipsyncJob"}) and meant_as_job({"kind": "LipSyncJobs"})
    assert meant_as_job({"apiVersion": "lipsync.dev/v1", "kind": "Job"})
    assert not meant_as_job({"apiVersion": "argoproj.io/v1alpha1", "kind": "Application"})
    assert not meant_as_job({"apiVersion": "batch/v1", "kind": "Job"})
    assert not meant_as_job({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization"})


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return face_and_empty(tmp_path_factory.mktemp("cli"))


def test_missing_weights_exit_alike_in_score_and_run(media: Path, tmp_path: Path) -> None:
    absent = tmp_path / "absent.pth"
    job = job_file(tmp_path, video=str(media / "face.mp4"), audio=str(media / "speech.wav"),
                   model={"name": "wav2lip", "weights": str(absent)})
    run = run_cli("run", str(job))
    score = run_cli("score", str(media / "face.mp4"), "--weights", str(absent))
    assert run.returncode == score.returncode == REASONS["InputNotFound"].exit_code, run.stderr + score.stderr
    assert "absent.pth" in score.stderr and "does not exist" in score.stderr


@pytest.mark.slow
def test_rerun_of_a_changed_job_names_what_changed(media: Path, tmp_path: Path) -> None:
    speech = tmp_path / "speech.wav"
    speech.write_bytes((media / "speech.wav").read_bytes())
    spec = dict(video=str(media / "face.mp4"), audio=str(speech), timing={"follow": "video"})
    assert run_cli("run", str(job_file(tmp_path, name="promo", **spec))).returncode == 0
    # new content under the same name, and a changed field
    speech.write_bytes((media / "speech.wav").read_bytes()[:-4000])
    job = job_file(tmp_path, name="promo", face={"padding": 0.4}, **spec)
    proc = run_cli("run", str(job), "--log-format", "json")
    assert proc.returncode == REASONS["OutputExists"].exit_code
    failed = [json.loads(line) for line in (proc.stdout + proc.stderr).splitlines() if '"failed"' in line]
    msg = failed[-1]["msg"]
    assert "an earlier render of this job ('promo')" in msg
    assert "changed inputs: spec.audio (new content)" in msg
    assert "spec.face.padding (null -> 0.4)" in msg
    assert "spec.video" not in msg  # unchanged: not named
    assert run_cli("run", str(job), "--force").returncode == 0


def _as_from_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


@pytest.mark.slow
def test_ctrl_c_exits_130_with_one_line(tmp_path: Path) -> None:
    video = clip(tmp_path / "long.mp4", seconds=20.0, width=640, height=360)
    job = job_file(tmp_path, video=str(video), audio=str(video.with_suffix(".wav")), timing={"follow": "video"})
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "sine=frequency=220:duration=20",
                    str(video.with_suffix(".wav"))], check=True)
    # Its own process group: Ctrl-C in a terminal signals the whole group, ffmpeg children included.
    # SIGINT back to its default in the child, as a terminal's shell starts a foreground command: a
    # suite started in the background of a non-interactive shell (`pytest &`, as some CI does)
    # ignores SIGINT, the child inherits that, and Python then rightly keeps ignoring it.
    proc = subprocess.Popen([sys.executable, "-m", "lipsync.cli", "run", str(job), "--log-format", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_as_from_a_terminal, env={**os.environ, "PYTHONPATH": str(RUNNER)})
    assert proc.stdout is not None
    # Interrupt as the render starts (the plan line comes right before it). Not a timed sleep: a
    # fast machine renders this clip in well under a second, and a late signal found a finished job.
    for line in proc.stdout:
        if '"event": "plan"' in line:
            break
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err + out[-1500:]  # the log after the signal says where it went
    assert err.strip().splitlines() == ["lipsync run: interrupted (Ctrl-C)"], err
    assert not (tmp_path / "out" / "metrics.json").exists()
