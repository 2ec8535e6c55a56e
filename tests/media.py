"""Test media, built with ffmpeg and espeak-ng on the spot (nothing committed, nothing downloaded),
and helpers that read facts back out of rendered files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from lipsync.sample import VideoRecipe, make_speech, make_video, still

SMALL = dict(width=480, height=270, fps=25.0, face_width=0.42)
SHORT_TEXT = "Hello there, this is a test of the lip sync runner."


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-y", "-loglevel", "error", *args], check=True)


def clip(dest: Path, seconds: float = 2.0, **kw) -> Path:
    recipe = VideoRecipe(**{**SMALL, "seconds": seconds, "motions": (still(),), "crf": 16, **kw})
    return make_video(dest, recipe)


def face_and_empty(d: Path, text: str = "Hi there.") -> Path:
    """A 1 s clip with a face, one with none (face.mp4, noface.mp4) and short speech (speech.wav)."""
    from lipsync.sample import VideoRecipe, make_video

    clip(d / "face.mp4", seconds=1.0)
    speech(d / "speech.wav", text=text)
    make_video(d / "noface.mp4", VideoRecipe(width=320, height=180, seconds=1.0, motions=()))
    return d


def speech(dest: Path, *codec_args: str, text: str = SHORT_TEXT, pad_silence: float = 0.0,
           rate: int = 44100, channels: int = 2) -> Path:
    return make_speech(dest, text, rate=rate, channels=channels, codec_args=codec_args, pad_silence=pad_silence)


def job_file(folder: Path, name: str = "t", **spec) -> Path:
    spec.setdefault("output", {"uri": str(folder / "out"), "preset": "ultrafast"})
    doc = {"apiVersion": "lipsync.dev/v1alpha1", "kind": "LipSyncJob", "metadata": {"name": name}, "spec": spec}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def probe(path: Path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def stream(path: Path, kind: str) -> dict:
    return next(s for s in probe(path)["streams"] if s["codec_type"] == kind)


def video_duration(path: Path) -> float:
    s = stream(path, "video")
    return int(s["nb_frames"]) * eval(s["r_frame_rate"]) ** -1


def packet_md5(path: Path) -> str:
    """MD5 of the first audio stream's packets, as ffmpeg's stream-copy md5 muxer sees them."""
    out = subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(path), "-map", "0:a:0", "-c", "copy", "-f", "md5", "-"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def packet_lines(path: Path) -> list[str]:
    """Per-packet hashes of the first audio stream (ffmpeg's framemd5 muxer, stream-copied)."""
    out = subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(path), "-map", "0:a:0", "-c", "copy", "-f", "framemd5", "-"],
                         capture_output=True, text=True, check=True)
    return [line.rsplit(",", 1)[-1].strip() for line in out.stdout.splitlines() if not line.startswith("#")]


def sample_md5(path: Path) -> str:
    """MD5 of the first audio stream's decoded samples (32-bit, so 16- and 24-bit both fit)."""
    out = subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(path), "-map", "0:a:0", "-c:a", "pcm_s32le",
                          "-f", "md5", "-"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def frames(path: Path, every: int = 1) -> np.ndarray:
    """All frames (BGR, uint8) of a small clip: tests only, on clips of a few seconds."""
    s = stream(path, "video")
    w, h = int(s["width"]), int(s["height"])
    raw = subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "bgr24", "-"],
                         capture_output=True, check=True).stdout
    arr = np.frombuffer(raw, np.uint8)
    side = rotated_size(s, w, h)
    return arr.reshape(-1, side[1], side[0], 3)[::every]


def rotated_size(s: dict, w: int, h: int) -> tuple[int, int]:
    rot = 0
    for side in s.get("side_data_list", []):
        rot = int(side.get("rotation", rot))
    rot = int(s.get("tags", {}).get("rotate", rot))
    return (h, w) if abs(rot) % 180 == 90 else (w, h)


def reencode(src: Path, dest: Path, crf: int = 18, preset: str = "ultrafast") -> Path:
    """A plain encode of ``src`` at the runner's settings: what pixels outside the mask must match."""
    ffmpeg("-i", str(src), "-an", "-c:v", "libx264", "-crf", str(crf), "-preset", preset, "-pix_fmt", "yuv420p", str(dest))
    return dest


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


RUNNER = Path(__file__).resolve().parents[1] / "runner"


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real `lipsync` CLI in a fresh process, as a user or a pod runs it."""
    return subprocess.run([sys.executable, "-m", "lipsync.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(RUNNER), **(env or {})}, timeout=timeout, cwd=cwd)


def peak_rss(folder: Path, seconds: float, audio: Path, **spec) -> float:
    """The runner's own peak RSS (a fresh CLI process) on a 960x540 clip of ``seconds``."""
    folder.mkdir()
    video = clip(folder / "clip.mp4", seconds=seconds, width=960, height=540, face_width=0.3)
    path = job_file(folder, video=str(video), audio=str(audio), timing={"follow": "video"}, **spec)
    proc = run_cli("run", str(path), "--log-format", "json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = json.loads((folder / "out" / "metrics.json").read_text())
    assert metrics["output"]["frames"] == int(seconds * 25)
    return metrics["peak_rss_mb"]
