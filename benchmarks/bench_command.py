"""Command-model benchmark: what handing the model the face crop saves over handing it the frame.

    .venv/bin/python benchmarks/bench_command.py               # 1080p, 4 s, 200 blur passes (under a minute here)
    .venv/bin/python benchmarks/bench_command.py --seconds 8 --passes 400

The model is benchmarks/blur_model.py, a command-contract program whose cost is fixed per pixel
(N Gaussian blur passes over every frame it is handed). Two runs, side by side on this machine:

1. the runner end to end (track, crop clip at 256 px, the command, overlay at full resolution,
   encode, remux, publish) with ``model: {name: command}``;
2. the same command on the full 1080p frames, then the speech muxed in (stream copy): what a
   pipeline without the crop would do.

Prints both wall times and their ratio, and the pixel ratio the crop buys.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "runner"))

from lipsync.sample import VideoRecipe, make_speech, make_video  # noqa: E402

MODEL = ROOT / "benchmarks" / "blur_model.py"
CROP = 256
TEXT = "The quick brown fox jumps over the lazy dog. " * 3


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def model_argv(passes: int, video: str = "{video}", audio: str = "{audio}", output: str = "{output}") -> list[str]:
    return [sys.executable, str(MODEL), video, audio, output, "--passes", str(passes)]


def runner(d: Path, video: Path, speech: Path, passes: int) -> tuple[float, dict]:
    doc = {"apiVersion": "lipsync.dev/v1alpha1", "kind": "LipSyncJob", "metadata": {"name": "crop"},
           "spec": {"video": str(video), "audio": str(speech), "timing": {"follow": "video"},
                    "model": {"name": "command", "command": model_argv(passes), "options": {"cropSize": CROP}},
                    "output": {"uri": str(d / "crop"), "preset": "veryfast", "crf": 20}}}
    path = d / "crop.yaml"
    path.write_text(yaml.safe_dump(doc))
    wall = timed([sys.executable, "-m", "lipsync.cli", "run", str(path), "--log-format", "json"])
    return wall, json.loads((d / "crop" / "metrics.json").read_text())


def full_frame(d: Path, video: Path, speech: Path, passes: int) -> float:
    t0 = time.perf_counter()
    timed(model_argv(passes, str(video), str(speech), str(d / "full-video.mp4")))
    timed(["ffmpeg", "-y", "-loglevel", "error", "-i", str(d / "full-video.mp4"), "-i", str(speech), "-map", "0:v",
           "-map", "1:a", "-c:v", "copy", "-c:a", "flac", "-strict", "-2", "-shortest", str(d / "full.mp4")])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--passes", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        speech = make_speech(d / "speech.wav", TEXT)
        video = make_video(d / "clip.mp4", VideoRecipe(width=1920, height=1080, seconds=args.seconds))
        os.environ["PYTHONPATH"] = str(ROOT / "runner")
        os.environ["LIPSYNC_TRACK_CACHE"] = "off"  # every run pays its own face track
        crop_wall, metrics = runner(d, video, speech, args.passes)
        full_wall = full_frame(d, video, speech, args.passes)
    stages = {k: v["wall_s"] for k, v in metrics["stages"].items()}
    print(f"clip 1920x1080 @25 fps, {args.seconds:g} s ({metrics['output']['frames']} frames); "
          f"model: {args.passes} blur passes per pixel; CPU ({os.cpu_count()} cores)")
    print(f"  runner, {CROP} px crop, end to end   {crop_wall:7.1f} s   (stages: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in stages.items()) + f"; peak RSS {metrics['peak_rss_mb']:.0f} MiB)")
    print(f"  same command on the full frame      {full_wall:7.1f} s   (command + audio mux)")
    print(f"  ratio crop ÷ full frame             {crop_wall / full_wall:7.2f}   "
          f"(pixels handed to the model: {CROP * CROP / (1920 * 1080):.3f} of the frame)")


if __name__ == "__main__":
    main()
