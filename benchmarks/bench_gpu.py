"""GPU benchmark: Wav2Lip renders against a bare transcode of the same clip, on an NVIDIA GPU.

    source .gpu-kit/enter.sh && python3 benchmarks/bench_gpu.py            # 1080p and 4K, 60 s clips
    python3 benchmarks/bench_gpu.py --sizes 1080p --seconds 20 --workers auto,1

For each clip size it prints, measured side by side in one run:
- × real time of a bare ffmpeg decode + x264 encode of the clip at the spec's default preset (medium);
- × real time of the runner with Wav2Lip (fp16 on CUDA, formula weights of the real layout: speed
  does not depend on the values) and with the baseline model, per ``--workers`` setting;
- the Wav2Lip render's wall ÷ the baseline model's (goal ≤ 1.05: the model hidden behind decode
  and encode) and ÷ the bare transcode's (goal: within 10 %);
- the mean GPU utilisation (nvidia-smi, every 200 ms) during the Wav2Lip render.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "runner"), str(ROOT)]

from lipsync.sample import VideoRecipe, make_speech, make_video  # noqa: E402

SIZES = {"1080p": (1920, 1080), "4k": (3840, 2160)}
TEXT = "The quick brown fox jumps over the lazy dog, and the dubbing team renders it again. " * 40


def gpu_sampler(stop: threading.Event, out: list[float]) -> None:
    while not stop.is_set():
        try:
            text = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                  capture_output=True, text=True, timeout=5).stdout
            out.append(float(text.split()[0]))
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            pass
        stop.wait(0.2)


def timed(cmd: list[str], env: dict[str, str] | None = None, gpu: bool = False) -> tuple[float, float | None]:
    samples: list[float] = []
    stop = threading.Event()
    sampler = threading.Thread(target=gpu_sampler, args=(stop, samples), daemon=True) if gpu else None
    if sampler:
        sampler.start()
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    stop.set()
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({done.returncode}): {(done.stdout + done.stderr)[-1500:]}")
    return wall, (statistics.mean(samples) if samples else None)


def job(folder: Path, name: str, video: Path, audio: Path, model: dict) -> Path:
    doc = {"apiVersion": "lipsync.dev/v1alpha1", "kind": "LipSyncJob", "metadata": {"name": name},
           "spec": {"video": str(video), "audio": str(audio), "timing": {"follow": "video"}, "model": model,
                    "output": {"uri": str(folder / name), "overwrite": True}}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1080p,4k")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--workers", default="auto", help="comma-separated --workers settings to run")
    args = ap.parse_args()
    from tests.wav2lip_weights import write_formula_checkpoint

    env = {**os.environ, "PYTHONPATH": str(ROOT / "runner"), "LIPSYNC_TRACK_CACHE": "off"}  # each run tracks
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        speech = make_speech(d / "speech.wav", TEXT)
        weights = write_formula_checkpoint(d / "wav2lip.pth")
        wav2lip = {"name": "wav2lip", "weights": str(weights), "options": {"device": "cuda", "precision": "fp16"}}
        print(f"{args.seconds:g} s clips at {args.fps:g} fps, x264 medium crf 18; × real time (higher is faster)")
        for size in args.sizes.split(","):
            w, h = SIZES[size]
            src = make_video(d / f"{size}.mp4", VideoRecipe(width=w, height=h, fps=args.fps, seconds=args.seconds))
            bare, _ = timed(["ffmpeg", "-y", "-loglevel", "error", "-i", str(src), "-an", "-c:v", "libx264",
                             "-preset", "medium", "-crf", "18", "-pix_fmt", "yuv420p", str(d / "bare.mp4")])
            print(f"{size}: bare transcode {args.seconds / bare:.2f}x ({bare:.1f} s)", flush=True)
            for workers in args.workers.split(","):
                run = [sys.executable, "-m", "lipsync.cli", "run", "--force", "--log-format", "json",
                       "--workers", workers]
                base, _ = timed([*run, str(job(d, f"{size}-base", src, speech, {"name": "baseline"}))], env)
                lip, util = timed([*run, str(job(d, f"{size}-w2l", src, speech, wav2lip))], env, gpu=True)
                print(f"{size} workers={workers}: wav2lip {args.seconds / lip:.2f}x ({lip:.1f} s), baseline "
                      f"{args.seconds / base:.2f}x ({base:.1f} s); wav2lip ÷ baseline {lip / base:.2f}, "
                      f"wav2lip ÷ bare {lip / bare:.2f}; GPU busy {util if util is None else round(util, 1)} %",
                      flush=True)


if __name__ == "__main__":
    main()
