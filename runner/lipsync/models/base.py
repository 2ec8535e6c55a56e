"""The model interface.

A *frame model* takes batches and gives batches: crops (B, S, S, 3) uint8 BGR, square, at the
model's ``crop_size``, plus the output frame indices they belong to; it returns crops of the same
shape. It knows nothing of files, ffmpeg or the cluster. Audio reaches it once, up front, as a
mono float32 array at ``audio_rate`` (the model's own resample; the output keeps the original).

A *clip model* (an external command, LatentSync) works on a whole crop clip instead: it gets the
path of the crop video and of its audio, and writes a clip of the same frame count and size.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class FrameModel(Protocol):
    name: str
    crop_size: int | None  # the square side it wants (96 for Wav2Lip); None: the pipeline picks
    audio_rate: int  # sample rate of the mono audio given to prepare()

    def prepare(self, audio: np.ndarray, fps: float, n_frames: int) -> None:
        """Compute per-frame audio features for output frames 0..n_frames-1."""

    def infer(self, crops: np.ndarray, frames: np.ndarray) -> np.ndarray:
        """Synced crops for ``crops`` (B, S, S, 3) uint8 BGR at output frame indices ``frames`` (B,)."""


@dataclass(frozen=True)
class ClipJob:
    video: Path  # the crop clip, constant fps, crop_size square
    audio: Path  # mono WAV at the model's audio_rate, as long as the clip
    output: Path  # where the model must write its clip
    fps: Fraction  # exact (30000/1001), so frame counts and rates compare exactly
    frames: int
    size: int


@runtime_checkable
class ClipModel(Protocol):
    name: str
    crop_size: int
    audio_rate: int

    def run_clip(self, job: ClipJob) -> None:
        """Write ``job.output``: ``job.frames`` frames of ``job.size`` square at ``job.fps``."""
