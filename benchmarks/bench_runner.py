"""Runner benchmark: the render's cost over the transcode it cannot avoid, measured side by side.

    .venv/bin/python benchmarks/bench_runner.py                  # 720p, 1080p, 4K; 10 s; 3 pairs (long)
    .venv/bin/python benchmarks/bench_runner.py --sizes 1080p --pairs 5 --seconds 10
    .venv/bin/python benchmarks/bench_runner.py --wav2lip        # adds Wav2Lip memory rows (weights built on the spot)

For each clip size and encoder setting (the spec's defaults, medium crf 18, and veryfast crf 20)
it runs a bare ``ffmpeg`` decode+x264 encode of the clip and the whole runner (baseline model,
``follow: video``) in *pairs*, interleaved (bare, runner, bare, runner, ...), and prints the
median and range of runner ÷ bare over the pairs for wall seconds and CPU seconds (user+sys of
the whole process tree). These machines are noisy: only paired ratios mean anything.

It also prints the whole process tree's peak resident memory (sampled every 20 ms, ffmpeg
children included: what a pod's memory limit sees) ÷ the bare transcode's, at 1080p and 4K.
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

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "runner"))

from lipsync.sample import VideoRecipe, make_speech, make_video  # noqa: E402

SIZES = {"720p": (1280, 720), "1080p": (1920, 1080), "4k": (3840, 2160)}
SETTINGS = {"defaults": ("medium", 18), "veryfast": ("veryfast", 20)}
TEXT = "The quick brown fox jumps over the lazy dog. " * 12


def measure(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user+sys, the whole tree) and peak tree RSS (MiB) of a command."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    peak, stop = [0], threading.Event()

    def sample() -> None:
        ps = psutil.Process(proc.pid)
        while not stop.is_set():
            total = 0
            try:
                for p in [ps, *ps.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                break
            peak[0] = max(peak[0], total)
            stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    if status != 0:
        raise RuntimeError(f"{cmd[:4]} failed: {proc.stderr.read().decode()[-800:] if proc.stderr else status}")
    return wall, usage.ru_utime + usage.ru_stime, peak[0] / 2**20


def job(folder: Path, name: str, video: Path, audio: Path, preset: str, crf: int, **spec) -> Path:
    doc = {"apiVersion": "lipsync.dev/v1alpha1", "kind": "LipSyncJob", "metadata": {"name": name},
           "spec": {"video": str(video), "audio": str(audio), "timing": {"follow": "video"},
                    "output": {"uri": str(folder / name), "preset": preset, "crf": crf, "overwrite": True}, **spec}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def bare(src: Path, dest: Path, preset: str, crf: int) -> list[str]:
    return ["ffmpeg", "-y", "-loglevel", "error", "-i", str(src), "-an", "-c:v", "libx264", "-preset", preset,
            "-crf", str(crf), "-pix_fmt", "yuv420p", str(dest)]


def runner(path: Path) -> list[str]:
    return [sys.executable, "-m", "lipsync.cli", "run", "--force", "--log-format", "json", str(path)]


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):5.2f} ({min(values):.2f}–{max(values):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="720p,1080p,4k")
    ap.add_argument("--settings", default="defaults,veryfast")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--wav2lip", action="store_true", help="also Wav2Lip (formula weights: speed does not depend on values) at its default batch size")
    args = ap.parse_args()
    # every run pays its own face track: the track cache would skip it from the second pair on
    env = {**os.environ, "PYTHONPATH": str(ROOT / "runner"), "LIPSYNC_TRACK_CACHE": "off"}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        speech = make_speech(d / "speech.wav", TEXT)
        weights = None
        if args.wav2lip:
            sys.path.insert(0, str(ROOT))
            from tests.wav2lip_weights import write_formula_checkpoint

            weights = write_formula_checkpoint(d / "wav2lip.pth")
        print(f"{args.seconds:g} s clips at 25 fps, baseline model, {psutil.cpu_count()} cores, "
              f"{args.pairs} interleaved pairs; runner ÷ bare ffmpeg decode+x264 at the same settings: median (range)")
        print(f"{'clip':<7}{'setting':<10}{'wall':>22}{'CPU s':>22}{'peak tree memory':>24}")
        for size in args.sizes.split(","):
            w, h = SIZES[size]
            src = make_video(d / f"{size}.mp4", VideoRecipe(width=w, height=h, seconds=args.seconds))
            for setting in args.settings.split(","):
                preset, crf = SETTINGS[setting]
                path = job(d, f"{size}-{setting}", src, speech, preset, crf)
                walls, cpus, mems = [], [], []
                for _ in range(args.pairs):
                    bw, bc, bm = measure(bare(src, d / "bare.mp4", preset, crf))
                    rw, rc, rm = measure(runner(path), env)
                    walls.append(rw / bw)
                    cpus.append(rc / bc)
                    mems.append(rm / bm)
                print(f"{size:<7}{setting:<10}{spread(walls):>22}{spread(cpus):>22}{spread(mems):>24}"
                      f"   (last pair: runner {rw:.1f} s / {rc:.1f} CPU s / {rm:.0f} MiB, bare {bw:.1f} s / {bc:.1f} / {bm:.0f})",
                      flush=True)
            if weights is not None and size in ("1080p", "4k"):
                preset, crf = SETTINGS["defaults"]
                path = job(d, f"{size}-wav2lip", src, speech, preset, crf,
                           model={"name": "wav2lip", "weights": str(weights), "options": {"device": "cpu"}})
                bw, bc, bm = measure(bare(src, d / "bare.mp4", preset, crf))
                rw, rc, rm = measure(runner(path), env)
                print(f"{size:<7}{'wav2lip':<10}{rw / bw:>22.2f}{rc / bc:>22.2f}{rm / bm:>24.2f}"
                      f"   (runner {rw:.1f} s / {rm:.0f} MiB, bare {bw:.1f} s / {bm:.0f} MiB)", flush=True)


if __name__ == "__main__":
    main()
