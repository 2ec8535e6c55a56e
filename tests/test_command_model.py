"""The command contract end to end, with a real external program (tests/tools/mouth_envelope.py),
and the LatentSync preset's command line (LatentSync itself is not installed here)."""

from __future__ import annotations

import os
import shutil
import sys
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from lipsync.errors import InvalidWeights, ModelFailed, ModelTimeout
from lipsync.models import ClipJob, load_model
from lipsync.models.latentsync import LatentSyncModel
from lipsync.pipeline import run_job
from lipsync.spec import load_jobs
from lipsync.video.source import source_index
from lipsync.video.track import detect_faces

from .media import clip, frames, job_file, packet_md5, peak_rss, psnr, reencode, run_cli, speech, stream

pytestmark = pytest.mark.slow  # renders or scores whole clips: `-m "not slow"` skips them

TOOLS = Path(__file__).parent / "tools"
TOOL = TOOLS / "mouth_envelope.py"


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("command-media")
    clip(d / "still.mp4", seconds=2.0)
    speech(d / "speech.m4a", "-c:a", "aac", "-b:a", "96k")
    return d


def command_spec(*flags: str, crop: int = 160, timeout: int = 60) -> dict:
    return {"name": "command", "command": [sys.executable, str(TOOL), "{video}", "{audio}", "{output}", *flags],
            "options": {"cropSize": crop, "timeoutSeconds": timeout}}


def run(folder: Path, media: Path, model: dict, follow: str = "video"):
    """follow: video (the default here) makes 50 frames of the 2 s clip, the speech cut to them."""
    job = load_jobs(job_file(folder, video=str(media / "still.mp4"), audio=str(media / "speech.m4a"),
                             model=model, timing={"follow": follow}))[0]
    return run_job(job, base_dir=folder)


def assert_nothing_published(folder: Path) -> None:
    out = folder / "out"
    assert not out.exists() or not any(out.iterdir())


def test_command_output_is_overlaid_at_full_resolution(media, tmp_path):
    result = run(tmp_path, media, command_spec(), follow="audio")  # the whole speech: the clip ping-pongs
    out = Path(result.artifacts["video"])
    n_out = result.metrics["output"]["frames"]
    got = frames(out)
    ref = frames(reencode(media / "still.mp4", tmp_path / "ref.mp4"))[[source_index(i, 50) for i in range(n_out)]]
    assert got.shape == ref.shape == (n_out, 270, 480, 3) and n_out > 50
    # Outside the face box nothing changed beyond the encoder's noise ...
    h, w = got.shape[1:3]
    outside = np.ones((h, w), bool)
    outside[int(0.25 * h):int(0.95 * h), int(0.3 * w):int(0.7 * w)] = False
    assert psnr(got[:, outside], ref[:, outside]) >= 40.0
    # ... and inside it the program's mouth bar arrived, where the speech is loud.
    gray = cv2.cvtColor(ref[0], cv2.COLOR_BGR2GRAY)
    (face,) = detect_faces(gray, 1.0)
    mouth = (slice(int(face.y + 0.6 * face.h), int(face.y + 1.05 * face.h)),
             slice(int(face.x + 0.2 * face.w), int(face.x + 0.8 * face.w)))
    diff = [np.abs(got[i][mouth].astype(int) - ref[i][mouth].astype(int)).mean() for i in range(len(got))]
    assert max(diff) > 8
    # The original audio, stream-copied.
    assert packet_md5(out) == packet_md5(media / "speech.m4a")
    # What the program printed is in the run log.
    assert f"mouth_envelope: wrote {n_out} frames of 160x160" in (tmp_path / "out" / "run.log").read_text()
    assert result.metrics["stages"]["render"]["frames"] == n_out


def test_command_is_given_the_tracked_face_at_the_requested_size(media, tmp_path):
    keep = tmp_path / "seen"
    run(tmp_path, media, command_spec("--keep", str(keep), crop=192))
    s = stream(keep / "crop.mp4", "video")
    assert (int(s["width"]), int(s["height"]), Fraction(s["r_frame_rate"])) == (192, 192, 25)
    crops = frames(keep / "crop.mp4")
    assert len(crops) == 50  # every output frame has a face here
    # The crop is the padded face: one face, centred, filling 1 / (1 + 2 * padding) of the side.
    (face,) = detect_faces(cv2.cvtColor(crops[25], cv2.COLOR_BGR2GRAY), 1.0)
    assert abs(face.cx - 96) < 12 and abs(face.cy - 96) < 20
    assert 0.5 < face.w / (192 / 1.5) < 1.3
    # The speech: mono, at the requested rate, as long as the crop clip.
    a = stream(keep / "speech.wav", "audio")
    assert (a["channels"], a["sample_rate"]) == (1, "16000")
    assert abs(float(a["duration"]) - 50 / 25) < 1e-3


def test_memory_stays_flat_with_clip_length(media, tmp_path):
    audio = media / "speech.m4a"
    short = peak_rss(tmp_path / "short", 2.0, audio, model=command_spec())
    long = peak_rss(tmp_path / "long", 8.0, audio, model=command_spec())
    assert long <= 1.2 * short, (short, long)


def test_nonzero_exit_is_model_failed_with_the_output_tail_as_detail_only(media, tmp_path):
    with pytest.raises(ModelFailed) as err:
        run(tmp_path, media, command_spec("--fail"))
    msg = str(err.value)
    assert "exited with code 3" in msg and "runner's log" in msg
    # The program's words go to the log (the CLI prints them), never into the message that
    # becomes status.message, an Event and the termination message.
    assert "CUDA out of memory (pretend)" not in msg
    assert "CUDA out of memory (pretend)" in err.value.detail
    assert_nothing_published(tmp_path)


def test_cli_prints_the_programs_last_lines_in_its_log_not_its_result(media, tmp_path):
    path = job_file(tmp_path, video=str(media / "still.mp4"), audio=str(media / "speech.m4a"),
                    model=command_spec("--fail"), timing={"follow": "video"})
    result = tmp_path / "result.json"
    proc = run_cli("run", str(path), "--log-format", "json", env={"LIPSYNC_RESULT_FILE": str(result)})
    assert proc.returncode == 21
    assert "CUDA out of memory (pretend)" in proc.stdout
    assert "CUDA out of memory (pretend)" not in result.read_text()


def test_program_gets_a_scrubbed_environment(tmp_path, monkeypatch):
    from lipsync.models.command import program_env, run_command

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value-123")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE12")
    monkeypatch.setenv("LIPSYNC_JOB", '{"spec": {}}')
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    env = program_env(os.environ, {"HF_HUB_OFFLINE": "1"})
    assert not any(k.startswith(("AWS_", "LIPSYNC_")) for k in env)
    assert env["CUDA_VISIBLE_DEVICES"] == "0" and env["PATH"] == os.environ["PATH"] and env["HF_HUB_OFFLINE"] == "1"
    out = tmp_path / "env.txt"
    run_command(["/bin/sh", "-c", f"env > {out}"], cwd=tmp_path, env=env, timeout_s=10, name="t")
    assert "s3cr3t-value-123" not in out.read_text() and "PATH=" in out.read_text()


def test_runner_is_not_dumpable_once_a_program_ran(tmp_path):
    """Non-dumpable: a program of the runner's (non-root) user cannot read /proc/<runner>/environ."""
    import ctypes

    from lipsync.models.command import run_command

    run_command(["/bin/true"], cwd=tmp_path, env={}, timeout_s=10, name="t")
    assert ctypes.CDLL(None).prctl(3, 0, 0, 0, 0) == 0  # PR_GET_DUMPABLE


def test_hanging_command_times_out_quickly(media, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(ModelTimeout, match="limit of 2 s"):
        run(tmp_path, media, command_spec("--hang", timeout=2))
    assert time.monotonic() - t0 < 20  # track + crop pass + 2 s, not the program's hour
    assert_nothing_published(tmp_path)


@pytest.mark.parametrize("flags,words", [
    (("--drop", "3"), "frame count: expected 50, got 47"),
    (("--size", "128"), "size: expected 160x160, got 128x128"),
])
def test_wrong_output_is_model_failed_naming_both(media, tmp_path, flags, words):
    with pytest.raises(ModelFailed, match=words):
        run(tmp_path, media, command_spec(*flags))
    assert_nothing_published(tmp_path)


def test_missing_program_is_model_failed(media, tmp_path):
    model = {"name": "command", "command": [str(tmp_path / "no-such-program"), "{video}"]}
    with pytest.raises(ModelFailed, match="could not start"):
        run(tmp_path, media, model)
    assert_nothing_published(tmp_path)


def test_placeholders_are_replaced_inside_arguments_in_one_pass(tmp_path):
    from lipsync.models.command import CommandModel
    from lipsync.spec import CommandOptions

    model = CommandModel.from_spec(["prog", "--in={video}", "{audio}", "-o", "{output}", "{other}"], CommandOptions())
    odd = tmp_path / "{audio}"  # a folder whose name looks like a placeholder stays as it is
    job = ClipJob(odd / "crop.mp4", odd / "speech.wav", odd / "synced.mp4", Fraction(25), 50, 256)
    assert model.command(job) == ["prog", f"--in={odd}/crop.mp4", f"{odd}/speech.wav", "-o", f"{odd}/synced.mp4",
                                  "{other}"]


# ---------------------------------------------------------------------------- LatentSync preset
@pytest.fixture
def latentsync_home(tmp_path, monkeypatch) -> Path:
    """A stand-in checkout: the files the preset looks for, no model."""
    home = tmp_path / "LatentSync"
    (home / "scripts").mkdir(parents=True)
    shutil.copy(TOOLS / "fake_latentsync_inference.py", home / "scripts" / "inference.py")
    (home / "configs" / "unet").mkdir(parents=True)
    for config in ("stage2.yaml", "stage2_512.yaml"):
        (home / "configs" / "unet" / config).write_text("data: {resolution: 256}\n")
    (home / "checkpoints" / "auxiliary").mkdir(parents=True)
    monkeypatch.setenv("LATENTSYNC_HOME", str(home))
    monkeypatch.delenv("LATENTSYNC_PYTHON", raising=False)
    return home


@pytest.fixture
def weights(tmp_path) -> Path:
    w = tmp_path / "weights"
    (w / "whisper").mkdir(parents=True)
    (w / "latentsync_unet.pt").write_bytes(b"unet")
    (w / "whisper" / "tiny.pt").write_bytes(b"whisper")
    return w


def latentsync(weights: Path, **options) -> LatentSyncModel:
    doc = {"apiVersion": "lipsync.dev/v1alpha1", "kind": "LipSyncJob", "metadata": {"name": "ls"},
           "spec": {"video": "v.mp4", "audio": "a.wav", "output": {"uri": "out"},
                    "model": {"name": "latentsync", "weights": str(weights), "options": options}}}
    from lipsync.spec import parse_job

    model = load_model(parse_job(doc).spec, weights)
    assert isinstance(model, LatentSyncModel)
    return model


def clip_job(folder: Path, size: int) -> ClipJob:
    return ClipJob(folder / "crop.mp4", folder / "speech.wav", folder / "synced.mp4", Fraction(25), 50, size)


@pytest.mark.parametrize("options,config,size,steps,guidance,seed", [
    ({}, "configs/unet/stage2.yaml", 256, "20", "1.5", "1247"),
    ({"version": "1.5", "inferenceSteps": 35, "guidanceScale": 2.0, "seed": 7}, "configs/unet/stage2.yaml", 256,
     "35", "2.0", "7"),
    ({"version": "1.6"}, "configs/unet/stage2_512.yaml", 512, "20", "1.5", "1247"),
    ({"version": "1.6", "inferenceSteps": 50, "guidanceScale": 3, "seed": 0}, "configs/unet/stage2_512.yaml", 512,
     "50", "3.0", "0"),
])
def test_latentsync_command_line(latentsync_home, weights, tmp_path, options, config, size, steps, guidance, seed):
    model = latentsync(weights, **options)
    job = clip_job(tmp_path, size)
    assert model.command(job) == [
        str(latentsync_home / ".venv" / "bin" / "python"), "-m", "scripts.inference",
        "--unet_config_path", config,
        "--inference_ckpt_path", "checkpoints/latentsync_unet.pt",
        "--inference_steps", steps, "--guidance_scale", guidance, "--seed", seed,
        "--video_path", str(job.video), "--audio_path", str(job.audio), "--video_out_path", str(job.output),
    ]
    assert (model.crop_size, model.audio_rate, model.output_fps) == (size, 16000, 25)
    assert model.env["HF_HUB_OFFLINE"] == "1"


def test_latentsync_deep_cache_flag(latentsync_home, weights, tmp_path):
    argv = latentsync(weights, deepCache=True).command(clip_job(tmp_path, 256))
    assert argv[argv.index("--seed") + 2] == "--enable_deepcache"
    assert "--enable_deepcache" not in latentsync(weights).command(clip_job(tmp_path, 256))


def test_latentsync_runs_in_a_private_copy_of_the_checkout(latentsync_home, weights, tmp_path):
    model = latentsync(weights, timeoutSeconds=60)
    run_dir = model.workdir(clip_job(tmp_path, 256))
    assert run_dir != latentsync_home and run_dir.parent == tmp_path
    assert (run_dir / "scripts").resolve() == latentsync_home / "scripts"
    ckpt = run_dir / "checkpoints"
    assert (ckpt / "latentsync_unet.pt").resolve() == weights / "latentsync_unet.pt"
    assert (ckpt / "whisper" / "tiny.pt").read_bytes() == b"whisper"
    assert (ckpt / "auxiliary").resolve() == latentsync_home / "checkpoints" / "auxiliary"  # from the image
    assert not (latentsync_home / "checkpoints" / "latentsync_unet.pt").exists()  # the checkout is untouched
    assert model.timeout_s == 60


def test_latentsync_weights_are_checked_up_front(latentsync_home, weights):
    (weights / "whisper" / "tiny.pt").unlink()
    with pytest.raises(InvalidWeights, match="lacks whisper/tiny.pt"):
        latentsync(weights)
    with pytest.raises(InvalidWeights, match="must be a folder"):
        latentsync(weights / "latentsync_unet.pt")


def test_latentsync_preset_end_to_end_at_another_frame_rate(latentsync_home, weights, tmp_path, monkeypatch, media):
    """Through the stand-in checkout: a 30 fps video goes to LatentSync, which answers at 25 fps
    with two extra frames; the runner converts back and drops the surplus."""
    monkeypatch.setenv("LATENTSYNC_PYTHON", sys.executable)
    video = clip(tmp_path / "thirty.mp4", seconds=2.0, fps=30.0)
    job = load_jobs(job_file(tmp_path, video=str(video), audio=str(media / "speech.m4a"), timing={"follow": "video"},
                             model={"name": "latentsync", "weights": str(weights)}))[0]
    result = run_job(job, base_dir=tmp_path)
    out = Path(result.artifacts["video"])
    s = stream(out, "video")
    assert (int(s["nb_frames"]), Fraction(s["r_frame_rate"])) == (60, 30)
    got, ref = frames(out), frames(reencode(video, tmp_path / "ref.mp4"))
    h, w = got.shape[1:3]
    outside = np.ones((h, w), bool)
    outside[int(0.25 * h):int(0.95 * h), int(0.3 * w):int(0.7 * w)] = False
    assert psnr(got[:, outside], ref[:, outside]) >= 40.0
    assert psnr(got, ref) < 40  # the mark on the mouth came back
    assert "Input video path:" in (tmp_path / "out" / "run.log").read_text()
