"""A stand-in lip-sync program for the command contract's tests: a real external process.

    python mouth_envelope.py VIDEO AUDIO OUTPUT [--keep DIR] [--fail] [--hang] [--drop N] [--size S]

It reads the crop clip and the WAV the runner wrote, darkens a bar over the mouth whose height
follows the loudness under each frame, and writes OUTPUT losslessly at the clip's size and rate.
The flags make it misbehave the ways a real model can: exit non-zero, hang, return too few
frames, or the wrong size. ``--keep`` copies its inputs aside so a test can inspect them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import wave
from collections import deque
from fractions import Fraction
from pathlib import Path

import numpy as np


def probe(path: str) -> tuple[int, int, Fraction]:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                          "stream=width,height,r_frame_rate", "-of", "json", path],
                         capture_output=True, text=True, check=True)
    s = json.loads(out.stdout)["streams"][0]
    return int(s["width"]), int(s["height"]), Fraction(s["r_frame_rate"])


def envelope(path: str, fps: Fraction) -> np.ndarray:
    with wave.open(path) as w:
        rate = w.getframerate()
        samples = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
    per = float(rate / fps)
    n = int(round(len(samples) / per))
    env = np.array([np.sqrt(np.mean(samples[int(i * per):int((i + 1) * per)] ** 2) + 1e-12) for i in range(n)])
    return env / max(float(env.max()), 1e-6)


def draw(frame: np.ndarray, loudness: float) -> np.ndarray:
    """A dark bar over the mouth (the face fills the middle of the padded crop), taller when louder."""
    s = frame.shape[0]
    height = int(round(loudness * 0.08 * s))
    if height:
        top = int(0.70 * s)
        frame[top:top + height, int(0.40 * s):int(0.60 * s)] = (20, 20, 60)
    return frame


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("video"), ap.add_argument("audio"), ap.add_argument("output")
    ap.add_argument("--keep"), ap.add_argument("--fail", action="store_true"), ap.add_argument("--hang", action="store_true")
    ap.add_argument("--drop", type=int, default=0), ap.add_argument("--size", type=int)
    args = ap.parse_args()
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(args.video, Path(args.keep) / "crop.mp4")
        shutil.copy(args.audio, Path(args.keep) / "speech.wav")
    if args.hang:
        time.sleep(3600)
    if args.fail:
        print("loading the model", file=sys.stderr)
        print("RuntimeError: CUDA out of memory (pretend)", file=sys.stderr)
        sys.exit(3)
    w, h, fps = probe(args.video)
    side = args.size or w
    env = envelope(args.audio, fps)
    dec = subprocess.Popen(["ffmpeg", "-v", "error", "-i", args.video, "-f", "rawvideo", "-pix_fmt", "bgr24", "-"],
                           stdout=subprocess.PIPE)
    enc = subprocess.Popen(["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{side}x{side}",
                            "-r", str(fps), "-i", "-", "-c:v", "libx264", "-crf", "0", "-preset", "ultrafast",
                            "-pix_fmt", "yuv444p", args.output], stdin=subprocess.PIPE)
    assert dec.stdout is not None and enc.stdin is not None
    held: deque[np.ndarray] = deque()  # the last --drop frames, never written
    written = 0
    while len(buf := dec.stdout.read(w * h * 3)) == w * h * 3:
        frame = draw(np.frombuffer(buf, np.uint8).reshape(h, w, 3).copy(), float(env[min(written + len(held), len(env) - 1)]))
        held.append(np.ascontiguousarray(frame[:side, :side]))
        if len(held) > args.drop:
            enc.stdin.write(held.popleft().tobytes())
            written += 1
    enc.stdin.close()
    if dec.wait() or enc.wait():
        sys.exit("ffmpeg failed")
    print(f"mouth_envelope: wrote {written} frames of {side}x{side}", file=sys.stderr)


if __name__ == "__main__":
    main()
