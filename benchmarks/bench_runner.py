"""Runner benchmark: ratios measured side by side in one run, on the same machine.

    .venv/bin/python benchmarks/bench_runner.py            # 1080p, 10 s and 60 s clips (a few minutes)
    .venv/bin/python benchmarks/bench_runner.py --quick    # 720p, 4 s and 16 s (about a minute)

Prints:
1. runner wall time ÷ a bare ffmpeg decode+encode of the same clip at the same settings
   (what the lip-sync work costs on top of the unavoidable transcode);
2. peak RSS of the runner on a short clip vs a 6× (quick: 4×) longer one (streaming: it should stay flat);
3. face-track fps with detection every 5 frames (tracking in between) ÷ detection on every frame.
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

TEXT = "The quick brown fox jumps over the lazy dog. " * 12


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of a command, the child's own accounting."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise RuntimeError(f"{cmd[:3]} failed: {proc.stderr.read().decode()[-500:] if proc.stderr else status}")
    return wall, usage.ru_maxrss / 1024


def job(folder: Path, name: str, video: Path, audio: Path, **spec) -> Path:
    doc = {"apiVersion": "lipsync.dev/v1alpha1", "kind": "LipSyncJob", "metadata": {"name": name},
           "spec": {"video": str(video), "audio": str(audio), "timing": {"follow": "video"},
                    "output": {"uri": str(folder / name), "preset": "veryfast", "crf": 20}, **spec}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def run(path: Path) -> tuple[float, float, dict]:
    wall, _ = timed([sys.executable, "-m", "lipsync.cli", "run", str(path), "--log-format", "json"])
    metrics = json.loads((Path(yaml.safe_load(path.read_text())["spec"]["output"]["uri"]) / "metrics.json").read_text())
    return wall, metrics["peak_rss_mb"], metrics


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    w, h, short, long_ = (1280, 720, 4.0, 16.0) if args.quick else (1920, 1080, 10.0, 60.0)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        speech = make_speech(d / "speech.wav", TEXT)
        clips = {s: make_video(d / f"clip{s:g}.mp4", VideoRecipe(width=w, height=h, seconds=s)) for s in (short, long_)}
        os.environ["PYTHONPATH"] = str(ROOT / "runner")
        rows = []

        ff_wall, ff_rss = timed(["ffmpeg", "-y", "-loglevel", "error", "-i", str(clips[short]), "-an", "-c:v", "libx264",
                                 "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p", str(d / "bare.mp4")])
        r_wall, r_rss, m_short = run(job(d, "short", clips[short], speech))
        rows.append(("runner wall ÷ bare ffmpeg decode+encode", f"{r_wall:.1f} s / {ff_wall:.1f} s", r_wall / ff_wall))

        l_wall, l_rss, m_long = run(job(d, "long", clips[long_], speech))
        rows.append((f"peak RSS {long_:g} s ÷ {short:g} s clip (runner process)", f"{l_rss:.0f} MiB / {r_rss:.0f} MiB",
                     l_rss / r_rss))

        _, _, m_every = run(job(d, "every", clips[short], speech, face={"detectEvery": 1}))
        t5, t1 = m_short["stages"]["track"]["fps"], m_every["stages"]["track"]["fps"]
        rows.append(("face-track fps: detect every 5 ÷ every frame", f"{t5:.1f} / {t1:.1f} fps", t5 / t1))

        print(f"clip {w}x{h} @25 fps, {short:g} s and {long_:g} s; baseline model; CPU")
        for name, detail, ratio in rows:
            print(f"  {name:<48} {detail:>26}   ratio {ratio:5.2f}")
        print(f"  render stage: {m_short['stages']['render']['fps']} fps; track stage: {t5} fps; "
              f"runner peak RSS {r_rss:.0f} MiB")


if __name__ == "__main__":
    main()
