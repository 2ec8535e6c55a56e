"""`lipsync score`: the offset search on synthetic embeddings, and the whole command on a generated clip.

The SyncNet weights are the formula checkpoint, not a trained expert: end-to-end tests check the
structure of the scores (counts, ranges, determinism, errors), never their quality.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lipsync import score
from lipsync.errors import REASONS
from lipsync.score import OffsetSearch, score_video, search_offsets

from . import media
from .wav2lip_weights import write_formula_checkpoint

pytestmark = pytest.mark.slow  # renders or scores whole clips: `-m "not slow"` skips them


def unit_rows(n: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, 512)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


# ---------------------------------------------------------------------------- the offset search
@pytest.mark.parametrize("k", [-7, 0, 3, 15])
def test_search_finds_the_shift_between_embeddings(k: int) -> None:
    video = unit_rows(60, seed=1)
    audio = unit_rows(60, seed=2)
    # Audio window i sounds what the lips show at window i + k: the audio leads by k frames.
    for i in range(60):
        if 0 <= i + k < 60:
            audio[i] = video[i + k]
    scores = search_offsets(video, audio, max_offset=15)
    assert scores.best_offset == k
    assert scores.lse_d == pytest.approx(0.0, abs=1e-6)
    # Unrelated unit vectors in 512-d lie ~sqrt(2) apart: the median offset, the confidence.
    assert scores.lse_c == pytest.approx(math.sqrt(2), abs=0.05)


def test_search_stays_within_the_offset_range() -> None:
    video = unit_rows(40, seed=3)
    audio = np.roll(video, -10, axis=0)  # a lead of 10 frames, beyond max_offset=4
    scores = search_offsets(video, audio, max_offset=4)
    assert -4 <= scores.best_offset <= 4
    assert scores.lse_d > 1.0  # no offset in range lines anything up


def test_search_in_batches_equals_the_whole_search() -> None:
    """score_video feeds the search batch by batch with only nearby audio: the same sums."""
    video, audio = unit_rows(50, seed=4), unit_rows(50, seed=5)
    whole = search_offsets(video, audio, max_offset=6)
    batched = OffsetSearch(6)
    for start in range(0, 50, 8):
        idx = np.arange(start, min(50, start + 8))
        lo, hi = max(0, start - 6), min(50, idx[-1] + 7)
        batched.add(idx, video[idx], audio[lo:hi], lo)
    got = batched.result()
    assert got.best_offset == whole.best_offset
    assert (got.lse_d, got.lse_c) == pytest.approx((whole.lse_d, whole.lse_c), abs=1e-6)


# ---------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("score")
    media.clip(d / "silent.mp4", seconds=2.0)
    media.speech(d / "speech.wav")
    media.ffmpeg("-i", str(d / "silent.mp4"), "-i", str(d / "speech.wav"), "-map", "0:v", "-map", "1:a",
                 "-c:v", "copy", "-c:a", "aac", "-shortest", str(d / "talk.mp4"))
    write_formula_checkpoint(d / "lipsync_expert.pth", model="syncnet_color")
    return d


def test_scores_a_clip_with_its_own_audio(media_dir: Path) -> None:
    result = score_video(media_dir / "talk.mp4", media_dir / "lipsync_expert.pth")
    assert result["model"] == "syncnet_color"
    assert result["frames"] == 50  # 2 s at 25 fps
    assert result["windows"] == result["frames"] - 4  # a face in every frame
    assert math.isfinite(result["lse_d"]) and 0.0 <= result["lse_d"] <= 2.0
    assert math.isfinite(result["lse_c"]) and result["lse_c"] >= 0.0
    assert -15 <= result["best_offset"] <= 15
    assert score_video(media_dir / "talk.mp4", media_dir / "lipsync_expert.pth") == result  # deterministic


def test_small_batches_score_like_one_batch(media_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The streaming path (several face batches, audio embedded and dropped on the way) changes nothing."""
    one = score_video(media_dir / "talk.mp4", media_dir / "lipsync_expert.pth")
    monkeypatch.setattr(score, "BATCH", 7)
    many = score_video(media_dir / "talk.mp4", media_dir / "lipsync_expert.pth")
    assert many["best_offset"] == one["best_offset"] and many["windows"] == one["windows"]
    assert many["lse_d"] == pytest.approx(one["lse_d"], abs=1e-4)
    assert many["lse_c"] == pytest.approx(one["lse_c"], abs=1e-4)


def test_cli_prints_json_and_a_summary(media_dir: Path) -> None:
    args = ("score", str(media_dir / "talk.mp4"), "--weights", str(media_dir / "lipsync_expert.pth"))
    proc = media.run_cli(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == score_video(media_dir / "talk.mp4", media_dir / "lipsync_expert.pth")
    text = media.run_cli(*args)
    assert text.returncode == 0 and "LSE-D" in text.stdout and "LSE-C" in text.stdout


def test_cli_scores_against_a_separate_audio_file(media_dir: Path) -> None:
    proc = media.run_cli("score", str(media_dir / "silent.mp4"), "--weights", str(media_dir / "lipsync_expert.pth"),
                         "--audio", str(media_dir / "speech.wav"), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["windows"] == 46


def test_cli_exit_codes(media_dir: Path) -> None:
    weights = str(media_dir / "lipsync_expert.pth")
    no_audio = media.run_cli("score", str(media_dir / "silent.mp4"), "--weights", weights)
    assert no_audio.returncode == REASONS["NoAudioStream"].exit_code, no_audio.stderr
    generator = write_formula_checkpoint(media_dir / "wav2lip.pth")  # the generator, not the expert
    wrong = media.run_cli("score", str(media_dir / "talk.mp4"), "--weights", str(generator))
    assert wrong.returncode == REASONS["InvalidWeights"].exit_code, wrong.stderr
    media.ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=1", "-i", str(media_dir / "speech.wav"),
                 "-shortest", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(media_dir / "noface.mp4"))
    faceless = media.run_cli("score", str(media_dir / "noface.mp4"), "--weights", weights)
    assert faceless.returncode == REASONS["NoFaceFound"].exit_code, faceless.stderr
