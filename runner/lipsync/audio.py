"""Audio for the model: the speech decoded to mono float32 at the model's rate.

This resample feeds the model only. The output video carries the original audio stream,
copied (see ``video.remux``). Speech is small next to video (16 kHz mono: 64 kB/s), so it is
decoded whole.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import ffmpeg
import numpy as np

from .errors import InvalidMedia


def load_mono(path: Path, rate: int, *, field: str = "spec.audio") -> np.ndarray:
    argv = (
        ffmpeg.input(str(path)).audio
        .output("pipe:", format="f32le", ac=1, ar=rate, loglevel="error", nostdin=None)
        .compile()
    )
    proc = subprocess.run(argv, capture_output=True)
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        raise InvalidMedia(f"{field}: decoding the audio failed ({lines[-1] if lines else proc.returncode})", stage="audio")
    return np.frombuffer(proc.stdout, np.float32).copy()


def frame_envelope(audio: np.ndarray, rate: int, fps: float, n_frames: int) -> np.ndarray:
    """RMS loudness of the audio under each video frame (0 past the audio's end)."""
    out = np.zeros(n_frames, np.float32)
    for i in range(n_frames):
        a, b = int(round(i * rate / fps)), int(round((i + 1) * rate / fps))
        chunk = audio[a:b]
        if chunk.size:
            out[i] = float(np.sqrt(np.mean(chunk.astype(np.float64) ** 2)))
    return out
