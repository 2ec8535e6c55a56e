"""preview.jpg: the picture a person looks at first.

A contact sheet of a few frames spread over the speech: the face before (top row) and after
(bottom row) the model, at the loudest moments (``pick``), where the mouth is open. Frames are
picked up front and copied as they stream past, so nothing is held beyond a few thumbnails.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .video.track import CropBox

TILE = 240


VOICED = 0.25  # a frame counts as speech at this fraction of the clip's loudest frame or more


def pick(track: list[CropBox | None], order: list[int], count: int = 4,
         energy: np.ndarray | None = None) -> list[int]:
    """Output frame indices to show (at most ``count``, ascending), among the frames with a face.

    ``order[i]`` is the source frame of output frame ``i`` and ``track[s]`` its face box or None.
    With ``energy`` (speech loudness per output frame, e.g. ``audio.frame_envelope``), tiles show
    the mouth while it speaks: the voiced frames (``VOICED`` of the loudest or more) are cut into
    ``count`` even spans and the loudest frame of each is shown, so a short clip's preview is not
    mostly closed mouths in pauses. Without it, or with no voiced frame, the frames are spread
    evenly over the clip."""
    with_face = [i for i, s in enumerate(order) if track[s] is not None]
    if not with_face:
        return []
    if energy is not None:
        loud = np.asarray(energy, np.float64)
        level = {i: float(loud[i]) if i < len(loud) else 0.0 for i in with_face}
        peak = max(level.values())
        voiced = [i for i in with_face if peak > 0 and level[i] >= VOICED * peak]
        if voiced:
            spans = np.array_split(np.array(voiced), min(count, len(voiced)))
            return sorted({int(max(span, key=lambda i: (level[int(i)], -int(i)))) for span in spans})
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
