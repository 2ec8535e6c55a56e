"""preview.jpg: the picture a person looks at first.

A contact sheet of a few frames spread over the clip: the face before (top row) and after
(bottom row) the model. Frames are picked up front and copied as they stream past, so nothing
is held beyond a few thumbnails.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .video.track import CropBox

TILE = 240


def pick(track: list[CropBox | None], order: list[int], count: int = 4) -> list[int]:
    """Output frame indices to show: evenly spread over the frames that have a face."""
    with_face = [i for i, s in enumerate(order) if track[s] is not None]
    if not with_face:
        return []
    step = len(with_face) / count
    return sorted({with_face[min(len(with_face) - 1, int(step * (k + 0.5)))] for k in range(count)})


def _tile(frame: np.ndarray, box: CropBox) -> np.ndarray:
    h, w = frame.shape[:2]
    x0, y0 = max(0, box.x), max(0, box.y)
    x1, y1 = min(w, box.x + box.size), min(h, box.y + box.size)
    region = frame[y0:y1, x0:x1] if x1 > x0 and y1 > y0 else frame
    return cv2.resize(region, (TILE, TILE), interpolation=cv2.INTER_AREA)


class Sheet:
    def __init__(self, indices: list[int]) -> None:
        self.wanted = set(indices)
        self.tiles: list[tuple[int, np.ndarray, np.ndarray]] = []

    def wants(self, i: int) -> bool:
        return i in self.wanted

    def add(self, i: int, before: np.ndarray, after: np.ndarray) -> None:
        """Tiles already cut: (TILE, TILE, 3) uint8 BGR of the face before and after the model."""
        self.tiles.append((i, before, after))

    def offer(self, i: int, before: np.ndarray, after: np.ndarray, box: CropBox | None) -> None:
        if i in self.wanted and box is not None:
            self.tiles.append((i, _tile(before, box), _tile(after, box)))

    def write(self, dest: Path, fps: float) -> bool:
        if not self.tiles:
            return False
        cols = []
        for i, before, after in sorted(self.tiles, key=lambda t: t[0]):
            col = np.vstack([before, after])
            cv2.putText(col, f"{i / fps:.2f}s", (6, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2)
            cols.append(col)
        sheet = np.hstack(cols)
        label = np.full((28, sheet.shape[1], 3), 32, np.uint8)
        cv2.putText(label, "top: input   bottom: lip-synced", (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1)
        return bool(cv2.imwrite(str(dest), np.vstack([label, sheet]), [cv2.IMWRITE_JPEG_QUALITY, 90]))
