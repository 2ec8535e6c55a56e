"""Face track: where the selected face is in every frame, as a stable, padded, square crop box.

Two steps. ``scan`` walks small analysis frames once: it detects faces every ``detect_every``
frames and on scene cuts, and where the answer changes between two detections (the face left or
came back) it detects on each frame in between, from a short ring buffer. ``build_track`` then
turns those sparse detections into one box per frame: interpolated between detections, short
misses bridged, smoothed over time within a shot, padded, and of a fixed size per shot. Only
boxes are kept for the whole clip, never frames.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from ..spec import FaceSpec

ANALYSIS_SIDE = 640  # the longer side of the frames the face detector sees
CUT_THRESHOLD = 30.0  # mean absolute difference of 64x36 grey thumbnails, 0-255
CONFIDENT = 3.0  # the face cascade's level weight above which a box stands without eyes found
_CASCADES: dict[str, cv2.CascadeClassifier] = {}


@dataclass(frozen=True)
class Box:
    """A face box in full-resolution pixels (x, y: top-left corner)."""

    x: float
    y: float
    w: float
    h: float

    @property
    def cx(self) -> float:
        return self.x + self.w / 2

    @property
    def cy(self) -> float:
        return self.y + self.h / 2

    def iou(self, o: "Box") -> float:
        ix = max(0.0, min(self.x + self.w, o.x + o.w) - max(self.x, o.x))
        iy = max(0.0, min(self.y + self.h, o.y + o.h) - max(self.y, o.y))
        inter = ix * iy
        union = self.w * self.h + o.w * o.h - inter
        return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class CropBox:
    """A square crop window in full-resolution pixels; may reach past the frame's edges."""

    x: int
    y: int
    size: int


@dataclass
class Scan:
    frames: int
    detections: dict[int, Box | None]  # frame index -> the selected face (None: looked, none found)
    cuts: list[int]  # frame indices where a new shot starts (0 always)
    detector_calls: int


def analysis_size(width: int, height: int) -> tuple[tuple[int, int], float]:
    """The even size frames are analysed at, and the factor back to full resolution."""
    scale = max(1.0, max(width, height) / ANALYSIS_SIDE)
    w, h = 2 * max(1, round(width / scale / 2)), 2 * max(1, round(height / scale / 2))
    return (w, h), width / w


CASCADES = {  # spec.face.detector -> OpenCV's cascade file (shipped in opencv-python-headless 4.x)
    "haar": "haarcascade_frontalface_default.xml",  # the fastest
    "haar-alt2": "haarcascade_frontalface_alt2.xml",  # fewer false faces, tighter boxes, a little slower
}


def _cascade(name: str) -> cv2.CascadeClassifier:
    if name not in _CASCADES:
        _CASCADES[name] = cv2.CascadeClassifier(cv2.data.haarcascades + name)
    return _CASCADES[name]


def _eyes(gray: np.ndarray, x: int, y: int, w: int, h: int) -> int:
    """How many eyes the eye cascade sees in the upper part of a face box (enlarged to 120 px)."""
    roi = gray[max(0, y):y + int(0.6 * h), max(0, x):x + w]
    if roi.size == 0:
        return 0
    roi = cv2.resize(roi, (120, max(1, int(120 * roi.shape[0] / roi.shape[1]))))
    return len(_cascade("haarcascade_eye.xml").detectMultiScale(roi, scaleFactor=1.1, minNeighbors=3, minSize=(12, 12)))


def _faces(gray: np.ndarray, offset: tuple[int, int], scale: float, detector: str, **kw: object) -> list[Box]:
    """Verified face boxes in ``gray`` (a frame or a window of one at ``offset``), full-res pixels.

    The face cascade alone also fires on face-like texture (collars, patterned clothes), and such a
    box can be larger than the real face. Faces are kept when the eye cascade finds both eyes in
    them; if none qualifies, the boxes the cascade itself is confident of are kept.
    """
    eq = cv2.equalizeHist(gray)
    boxes, _, weights = _cascade(CASCADES[detector]).detectMultiScale3(eq, scaleFactor=1.1, minNeighbors=5, outputRejectLevels=True, **kw)
    found = list(zip((tuple(int(v) for v in b) for b in boxes), (float(w) for w in weights)))
    kept = [b for b, _ in found if _eyes(eq, *b) >= 2]
    if not kept:  # eyes too small or hidden (glasses, light): the cascade's confident boxes stand
        kept = [b for b, weight in found if weight >= CONFIDENT]
    ox, oy = offset
    return [Box((x + ox) * scale, (y + oy) * scale, w * scale, h * scale) for (x, y, w, h) in kept]


def detect_faces(gray: np.ndarray, scale: float, detector: str = "haar") -> list[Box]:
    """Faces in a small grey frame, in full-resolution pixels (``scale`` = full / small)."""
    min_side = max(24, int(min(gray.shape) * 0.06))
    return _faces(gray, (0, 0), scale, detector, minSize=(min_side, min_side))


def detect_near(gray: np.ndarray, scale: float, near: Box, detector: str = "haar") -> list[Box]:
    """Faces of about ``near``'s size in a window around it (full-resolution pixels in and out).

    Tracking a face from one detection to the next needs no full-frame search: the window and
    the narrow range of sizes make this several times cheaper than ``detect_faces``.
    """
    side = max(near.w, near.h) / scale
    h, w = gray.shape
    x0, y0 = int(max(0, near.x / scale - side)), int(max(0, near.y / scale - side))
    x1, y1 = int(min(w, (near.x + near.w) / scale + side)), int(min(h, (near.y + near.h) / scale + side))
    lo, hi = max(12, int(0.6 * side)), int(1.7 * side) + 1
    if x1 - x0 < lo or y1 - y0 < lo:
        return []
    return _faces(gray[y0:y1, x0:x1], (x0, y0), scale, detector, minSize=(lo, lo), maxSize=(hi, hi))


def select_face(faces: list[Box], face: FaceSpec, previous: Box | None) -> Box | None:
    """The face to sync: the one continuing the previous box if any, else by the spec's rule."""
    if not faces:
        return None
    if previous is not None:
        best = max(faces, key=previous.iou)
        if previous.iou(best) > 0.2:
            return best
    if face.select == "largest":
        return max(faces, key=lambda b: b.w * b.h)
    ordered = sorted(faces, key=lambda b: b.cx)
    return ordered[face.index] if face.index < len(ordered) else None


def _thumb(gray: np.ndarray) -> np.ndarray:
    return cv2.resize(gray, (64, 36), interpolation=cv2.INTER_AREA).astype(np.int16)


def scan(frames: Iterable[np.ndarray], scale: float, face: FaceSpec) -> Scan:
    """One pass over small analysis frames: (H, W) grey or (H, W, 3) BGR uint8."""
    every = face.detect_every
    detections: dict[int, Box | None] = {}
    cuts: list[int] = []
    calls = 0
    buffer: deque[tuple[int, np.ndarray]] = deque(maxlen=every)
    prev_thumb: np.ndarray | None = None
    last_key: int | None = None
    previous: Box | None = None

    def detect(i: int, gray: np.ndarray) -> Box | None:
        nonlocal calls, previous
        calls += 1
        # Near the last face: only a box that continues it; anything else needs the whole frame,
        # where the selection rule (largest, index from the left) sees every face.
        near = detect_near(gray, scale, previous, face.detector) if previous is not None else []
        faces = [f for f in near if previous is not None and f.iou(previous) > 0.2]
        box = select_face(faces or detect_faces(gray, scale, face.detector), face, previous)
        detections[i] = box
        previous = box if box is not None else previous
        return box

    def keyframe(i: int, gray: np.ndarray) -> None:
        """Detect at ``i``; where the answer changed since the last keyframe (the face came or
        went in between), detect on every frame in between to find the change exactly."""
        nonlocal last_key
        before = detections.get(last_key) if last_key is not None else None
        now = detect(i, gray)
        if last_key is not None and (before is None) != (now is None):
            for j, g in buffer:
                if last_key < j < i:
                    detect(j, g)
        last_key = i

    n = 0
    for i, frame in enumerate(frames):
        n = i + 1
        gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        thumb = _thumb(gray)
        is_cut = prev_thumb is None or float(np.abs(thumb - prev_thumb).mean()) > CUT_THRESHOLD
        prev_thumb = thumb
        if is_cut:
            if buffer and buffer[-1][0] != last_key:
                keyframe(*buffer[-1])  # the old shot's last frame anchors its tail
            cuts.append(i)
            previous, last_key = None, None
            buffer.clear()
        if is_cut or i % every == 0:
            keyframe(i, gray)
        buffer.append((i, gray))
    if buffer and buffer[-1][0] != last_key:
        keyframe(*buffer[-1])  # the last frame anchors the tail
    return Scan(n, detections, cuts or [0], calls)


def _shots(cuts: list[int], n: int) -> list[tuple[int, int]]:
    edges = sorted(set(cuts) | {0}) + [n]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]


def _fill(detections: dict[int, Box | None], keys: list[int], start: int, end: int, bridge: int) -> list[Box | None]:
    """Per-frame boxes for one shot: linear between detections, misses up to ``bridge`` frames bridged.

    Two consecutive hits ``a < b`` are joined when no detection in between found nothing, or when
    the misses span at most ``bridge`` frames and the two boxes overlap (IoU ≥ 0.3): a blink of
    the detector, not the face leaving. One walk over the shot's detections: linear in its length.
    """
    out: list[Box | None] = [None] * (end - start)
    last: int | None = None  # the previous hit's frame
    missed = False  # a detection between ``last`` and now found nothing
    for k in keys[bisect_left(keys, start):bisect_left(keys, end)]:  # ``keys``: the detected frames, sorted
        bk = detections[k]
        if bk is None:
            missed = True
            continue
        out[k - start] = bk
        if last is not None:
            ba = detections[last]
            assert ba is not None
            if not missed or (k - last <= bridge and ba.iou(bk) >= 0.3):
                a0 = np.array((ba.x, ba.y, ba.w, ba.h))
                step = (np.array((bk.x, bk.y, bk.w, bk.h)) - a0) / (k - last)
                for j in range(last + 1, k):
                    out[j - start] = Box(*(a0 + (j - last) * step).tolist())
        last, missed = k, False
    return out


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < 2:
        return values
    pad = window // 2
    padded = np.pad(values, (pad, pad), mode="edge")
    return np.convolve(padded, np.ones(window) / window, mode="valid")[: len(values)]


def _runs(boxes: list[Box | None]) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, b in enumerate(boxes + [None]):
        if b is not None and start is None:
            start = i
        elif b is None and start is not None:
            runs.append((start, i))
            start = None
    return runs


def build_track(sc: Scan, *, fps: float, padding: float, every: int) -> list[CropBox | None]:
    """One crop box per frame (None: no face, the frame passes through)."""
    track: list[CropBox | None] = [None] * sc.frames
    window = max(3, int(round(fps * 0.3)) | 1)
    keys = sorted(sc.detections)
    for start, end in _shots(sc.cuts, sc.frames):
        boxes = _fill(sc.detections, keys, start, end, bridge=3 * every)
        for a, b in _runs(boxes):
            run = [bx for bx in boxes[a:b] if bx is not None]
            cx = _smooth(np.array([bx.cx for bx in run]), window)
            cy = _smooth(np.array([bx.cy for bx in run]), window)
            side = float(np.median([max(bx.w, bx.h) for bx in run])) * (1 + 2 * padding)
            size = int(round(side / 2)) * 2
            for k, (x, y) in enumerate(zip(cx, cy)):
                track[start + a + k] = CropBox(int(round(x - size / 2)), int(round(y - size / 2)), size)
    return track


def jitter(track: list[CropBox | None]) -> float:
    """Mean frame-to-frame movement of the box centre, as a fraction of its side."""
    steps = [
        np.hypot(b.x - a.x, b.y - a.y) / a.size
        for a, b in zip(track, track[1:])
        if a is not None and b is not None and a.size == b.size
    ]
    return round(float(np.mean(steps)), 5) if steps else 0.0
