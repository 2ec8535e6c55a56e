"""Overlay: where the mouth sits in a crop, and the feathered mask through which the model's crop
is blended back (the blend itself is ``render.Converter.blend``, in the source's own planes).

One point ties the stages together: the face track places every crop so that the mouth its
landmarks give lands on ``mouth_point`` (the middle of the crop, ``MOUTH_DOWN`` of the face down
from the face's top, the face filling the middle of the padded crop); the models that draw a
mouth draw it there, and the mask is centred there. So the mask follows the real mouth through
zooms, sudden moves and turns, whatever the detector's box does.

The mask covers the mouth and jaw only, in the face's own proportions. Its feather is a Gaussian;
values under 1/255 are cut to zero, so every pixel outside the mask keeps exactly the decoded value.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

MOUTH_DOWN = 0.84  # the mouth's centre below the face box's top, in face heights (the astronaut's, in a Haar box)


def face_side(size: int, padding: float) -> float:
    """The face's side (px) in a ``size`` px crop padded by ``padding`` of the face on each side."""
    return size / (1 + 2 * padding)


def mouth_point(size: float, padding: float) -> tuple[float, float]:
    """(x, y) px in a ``size`` px crop: where the track puts the mouth's centre."""
    face = size / (1 + 2 * padding)
    return size / 2, padding * face + MOUTH_DOWN * face


@lru_cache(maxsize=16)
def mouth_mask(size: int, padding: float) -> np.ndarray:
    """(size, size, 1) float32 in [0, 1]: a feathered ellipse over the mouth and jaw, centred on
    ``mouth_point``."""
    face = face_side(size, padding)
    mx, my = mouth_point(size, padding)
    mask = np.zeros((size, size), np.float32)
    centre = (int(round(mx)), int(round(my)))
    axes = (int(round(0.32 * face)), int(round(0.28 * face)))
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 1.0, thickness=-1)
    sigma = max(1.0, 0.06 * face)
    mask = cv2.GaussianBlur(mask, (0, 0), sigma)
    mask = np.clip(mask / max(1e-6, float(mask.max())), 0.0, 1.0)
    mask[mask < 1 / 255] = 0.0
    return mask[:, :, None]
