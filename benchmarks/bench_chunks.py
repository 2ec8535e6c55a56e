"""Chunked renders: local workers against the single-process runner, and the stitch step's share.

    .venv/bin/python benchmarks/bench_chunks.py                 # 60 s 1080p clip, workers 1, 2, auto
    .venv/bin/python benchmarks/bench_chunks.py --seconds 20 --workers 1,2

Prints, side by side in one run (runs interleaved, ``--rounds`` times): wall time of the runner with
each ``--workers`` setting ÷ the single-process runner (one chunk for the whole clip, one worker),
and the stitch stage's share of the total wall time (from metrics.json; goal under 3 %).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "runner"))

from lipsync.sample import VideoRecipe, make_speech, make_video  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog. " * 30


def render(folder: Path, name: str, video: Path, audio: Path, workers: str, chunk_seconds: float) -> tuple[float, dict]:
    doc = {"apiVersion": "lipsync.dev/v1alpha1", "kind": "LipSyncJob", "metadata": {"name": name},
           "spec": {"video": str(video), "audio": str(audio), "timing": {"follow": "video"},
                    "render": {"chunkSeconds": chunk_seconds},
                    "output": {"uri": str(folder / name), "preset": "veryfast", "crf": 20, "overwrite": True}}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lipsync.cli", "run", "--force", "--log-format", "json", "--workers",
                    workers, str(path)], check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT / "runner"), "LIPSYNC_TRACK_CACHE": "off"})
    wall = time.perf_counter() - t0
    return wall, json.loads((folder / name / "metrics.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--workers", default="1,2,auto")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        speech = make_speech(d / "speech.wav", TEXT)
        src = make_video(d / "clip.mp4", VideoRecipe(width=1920, height=1080, seconds=args.seconds))
        ratios: dict[str, list[float]] = {w: [] for w in args.workers.split(",")}
        shares: list[float] = []
        for _ in range(args.rounds):
            single, _ = render(d, "single", src, speech, "1", 3600.0)
            for workers in ratios:
                wall, metrics = render(d, f"w{workers}", src, speech, workers, 10.0)
                ratios[workers].append(wall / single)
                shares.append(metrics["stages"]["stitch"]["wall_s"] / wall)
        print(f"1080p {args.seconds:g} s clip, 10 s chunks, {os.cpu_count()} cores, {args.rounds} rounds; "
              "wall ÷ single-process runner (median, range):")
        for workers, values in ratios.items():
            print(f"  --workers {workers:<5} {statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})")
        print(f"  stitch stage share of the total wall: {100 * statistics.median(shares):.1f} % "
              f"(max {100 * max(shares):.1f} %)")


if __name__ == "__main__":
    main()
