"""Streaming: the runner's memory does not grow with the clip's length.

Asserted loosely (a 4x longer clip stays within 20 % peak RSS); the figures themselves live in
benchmarks/bench_runner.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .media import clip, job_file, speech

RUNNER = Path(__file__).resolve().parents[1] / "runner"


def peak_rss(tmp_path: Path, seconds: float, audio: Path) -> float:
    folder = tmp_path / f"s{seconds:g}"
    folder.mkdir()
    video = clip(folder / "clip.mp4", seconds=seconds, width=960, height=540, face_width=0.3)
    path = job_file(folder, video=str(video), audio=str(audio), timing={"follow": "video"})
    env = {**os.environ, "PYTHONPATH": str(RUNNER)}
    proc = subprocess.run([sys.executable, "-m", "lipsync.cli", "run", str(path), "--log-format", "json"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = json.loads((folder / "out" / "metrics.json").read_text())
    assert metrics["output"]["frames"] == int(seconds * 25)
    return metrics["peak_rss_mb"]


def test_peak_memory_flat_in_clip_length(tmp_path):
    audio = speech(tmp_path / "speech.wav")
    short, long = peak_rss(tmp_path, 2.0, audio), peak_rss(tmp_path, 8.0, audio)
    assert long <= 1.2 * short, (short, long)
