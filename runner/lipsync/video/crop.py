"""Crop: cut the square face window out of a full-resolution frame, at the model's size.

The window may reach past the frame's edges (a face near the border, generous padding): the
missing part is filled by replicating the edge, so the model always sees a full square.
"""

from __future__ import annotations

import cv2
import numpy as np

from .track import CropBox


def cut(frame: np.ndarray, box: CropBox, size: int) -> np.ndarray:
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = box.x, box.y, box.x + box.size, box.y + box.size
    region = frame[max(0, y0):min(h, y1), max(0, x0):min(w, x1)]
    pads = (max(0, -y0), max(0, y1 - h), max(0, -x0), max(0, x1 - w))
    if any(pads):
        region = cv2.copyMakeBorder(region, *pads, borderType=cv2.BORDER_REPLICATE)
    if box.size == size:
        return np.ascontiguousarray(region)
    interp = cv2.INTER_AREA if box.size > size else cv2.INTER_CUBIC
    return cv2.resize(region, (size, size), interpolation=interp)
