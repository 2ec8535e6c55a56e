"""Overlay: put the model's crop back onto the full-resolution frame through a feathered mask.

The mask covers the mouth and jaw only, in the face's own proportions (the face fills the
centre of the padded crop). Its feather is a Gaussian; values under 1/255 are cut to zero, so
every pixel outside the mask keeps exactly the decoded value.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from .track import CropBox


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


def paste(frame: np.ndarray, box: CropBox, synced: np.ndarray, padding: float) -> np.ndarray:
    """A copy of ``frame`` with ``synced`` (any square size) blended in at ``box``."""
    if synced.shape[0] != box.size:
        synced = cv2.resize(synced, (box.size, box.size), interpolation=cv2.INTER_CUBIC)
    mask = mouth_mask(box.size, padding)
    h, w = frame.shape[:2]
    x0, y0 = max(0, box.x), max(0, box.y)
    x1, y1 = min(w, box.x + box.size), min(h, box.y + box.size)
    out = frame.copy()
    if x1 <= x0 or y1 <= y0:
        return out
    sub = (slice(y0 - box.y, y1 - box.y), slice(x0 - box.x, x1 - box.x))
    m = mask[sub]
    rows = np.nonzero(m.any(axis=(1, 2)))[0]
    cols = np.nonzero(m.any(axis=(0, 2)))[0]
    if rows.size == 0:
        return out
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    m = m[r0:r1, c0:c1]
    src = synced[sub][r0:r1, c0:c1].astype(np.float32)
    dst = out[y0 + r0:y0 + r1, x0 + c0:x0 + c1]
    blended = dst.astype(np.float32) * (1 - m) + src * m
    dst[...] = np.where(m > 0, np.clip(np.rint(blended), 0, 255), dst).astype(np.uint8)
    return out
