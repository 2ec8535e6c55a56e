"""The baseline model: weights-free and visibly driven by the audio.

It drops the jaw and opens a dark mouth cavity in proportion to the speech envelope under each
frame. It exists for demos and tests: it exercises the same crop → model → overlay → remux path
as Wav2Lip, and its output is easy to check (loud frames change the mouth, silent ones do not).
It draws the mouth where the face track puts the real one (``overlay.mouth_point``), the face
filling the middle of the padded crop.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from ..audio import frame_envelope
from ..spec import BaselineOptions
from ..video.overlay import face_side, mouth_point

CROP_SIZE = 256


@functools.lru_cache(maxsize=8)
def _jaw_field(size: int, padding: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sampling grid (xs, ys) and how far each pixel moves with the jaw (0-1), per crop size:
    the same for every frame, so computed once."""
    face = face_side(size, padding)
    cx, mouth_y = mouth_point(size, padding)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    across = np.exp(-(((xs - cx) / (0.22 * face)) ** 2))
    below = np.clip((ys - mouth_y) / (0.04 * face), 0.0, 1.0) * np.exp(-(((ys - mouth_y) / (0.30 * face)) ** 2))
    for a in (xs, ys):
        a.flags.writeable = False
    return xs, ys, (across * below).astype(np.float32)


class BaselineModel:
    name = "baseline"
    crop_size: int | None = CROP_SIZE
    audio_rate = 16000
    # Cheap per frame: small batches keep the model busy and few full frames waiting for it
    # (the render holds about two batches of them; 16 here cost 75 MB more at 1080p).
    batch_size = 4

    def __init__(self, options: BaselineOptions, padding: float) -> None:
        self.gain = options.gain
        self.padding = padding
        self.openness = np.zeros(0, np.float32)

    def prepare(self, audio: np.ndarray, fps: float, n_frames: int) -> None:
        env = frame_envelope(audio, self.audio_rate, fps, n_frames)
        loud = env[env > 1e-3]
        ref = float(np.percentile(loud, 90)) if loud.size else 1.0
        open_ = np.clip(env / max(ref, 1e-6), 0.0, 1.0)
        open_[env < 0.01 * ref] = 0.0  # silence keeps the mouth exactly as it was
        self.openness = np.clip(open_ * self.gain, 0.0, 1.0).astype(np.float32)

    def infer(self, crops: np.ndarray, frames: np.ndarray) -> np.ndarray:
        out = crops.copy()
        for k, i in enumerate(frames):
            amount = float(self.openness[i]) if i < len(self.openness) else 0.0
            if amount > 0:
                out[k] = self._open_mouth(crops[k], amount)
        return out

    def _open_mouth(self, crop: np.ndarray, amount: float) -> np.ndarray:
        size = crop.shape[0]
        face = face_side(size, self.padding)
        cx, mouth_y = mouth_point(size, self.padding)
        drop = amount * 0.10 * face  # how far the lower lip and jaw move down, in pixels
        xs, ys, shape = _jaw_field(size, self.padding)
        warped = cv2.remap(crop, xs, ys - drop * shape, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        cavity = np.zeros((size, size), np.float32)
        centre = (int(round(cx)), int(round(mouth_y + drop / 2)))
        axes = (max(1, int(round(0.13 * face))), max(1, int(round(drop / 2 + 0.01 * face))))
        cv2.ellipse(cavity, centre, axes, 0, 0, 360, 1.0, thickness=-1)
        cavity = cv2.GaussianBlur(cavity, (0, 0), max(1.0, 0.012 * face))[:, :, None] * 0.9
        dark = np.array([30, 25, 70], np.float32)  # BGR: a dark, reddish mouth interior
        return np.clip(warped * (1 - cavity) + dark * cavity, 0, 255).astype(np.uint8)
