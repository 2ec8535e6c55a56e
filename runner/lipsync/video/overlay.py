"""Overlay: the feathered mask through which the model's crop is blended back (the blend itself
is ``render.Converter.blend``, in the source's own planes).

The mask covers the mouth and jaw only, in the face's own proportions (the face fills the
centre of the padded crop). Its feather is a Gaussian; values under 1/255 are cut to zero, so
every pixel outside the mask keeps exactly the decoded value.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np



@lru_cache(maxsize=16)
def mouth_mask(size: int, padding: float) -> np.ndarray:
    """(size, size, 1) float32 in [0, 1]: a feathered ellipse over the mouth and jaw."""
    face = size / (1 + 2 * padding)
    top = (size - face) / 2
    mask = np.zeros((size, size), np.float32)
    centre = (int(round(size / 2)), int(round(top + 0.84 * face)))
    axes = (int(round(0.32 * face)), int(round(0.28 * face)))
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 1.0, thickness=-1)
    sigma = max(1.0, 0.06 * face)
    mask = cv2.GaussianBlur(mask, (0, 0), sigma)
    mask = np.clip(mask / max(1e-6, float(mask.max())), 0.0, 1.0)
    mask[mask < 1 / 255] = 0.0
    return mask[:, :, None]
