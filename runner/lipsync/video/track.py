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
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..errors import InvalidWeights
from ..spec import FaceSpec
from . import faces, overlay
from .faces import Face, grey

ANALYSIS_SIDE = 1280  # the longer side of the frames the face detector sees (a 4 % face: 51 px)
MIN_FACE = 0.015  # the smallest face searched for, as a fraction of the analysis frame's longer side
MOUTH_BELOW_EYES = 1.0  # mouth centre below the eyes' midpoint, in eye distances (measured on the astronaut)
EYE_LINE_NOISE = float(np.radians(4.0))  # eye-line slope taken as detector noise
FOLLOW_FACE = 32  # px: the face's width in the patch followed from frame to frame between detections
FOLLOW_MATCH = 0.6  # normalised correlation from which the followed patch is taken as found
STILL = 2.0  # grey levels: no 32 px block's mean moved more than this, the frame is unchanged
CUT_THRESHOLD = 30.0  # mean absolute difference of 64x36 grey thumbnails, 0-255


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
    """A square crop window in full-resolution pixels; may reach past the frame's edges.

    ``landmarks``: the face's points in this frame, full-resolution (x, y): the person's right
    eye, left eye, then (YuNet) nose tip, right and left mouth corner; empty when the detector
    gives none. ``mouth`` is read from them.
    """

    x: int
    y: int
    size: int
    landmarks: tuple[tuple[float, float], ...] = ()

    @property
    def mouth(self) -> tuple[float, float] | None:
        """The mouth's centre (full-resolution pixels): between the mouth corners when known, else
        one eye distance below the eyes' midpoint, square to the line through the eyes (a tilted
        head tilts it; slopes under 4° count as level). None without landmarks."""
        pts = self.landmarks
        if len(pts) >= 5:
            return ((pts[3][0] + pts[4][0]) / 2, (pts[3][1] + pts[4][1]) / 2)
        if len(pts) >= 2:
            (rx, ry), (lx, ly) = pts[0], pts[1]
            d, angle = float(np.hypot(lx - rx, ly - ry)), float(np.arctan2(ly - ry, lx - rx))
            # a few degrees of eye-line slope are the eye detector's noise, not a tilted head
            angle -= float(np.clip(angle, -EYE_LINE_NOISE, EYE_LINE_NOISE))
            down = MOUTH_BELOW_EYES * d
            return ((rx + lx) / 2 - down * float(np.sin(angle)), (ry + ly) / 2 + down * float(np.cos(angle)))
        return None


@dataclass
class Scan:
    frames: int
    detections: dict[int, Box | None]  # frame index -> the selected face (None: looked, none found)
    cuts: list[int]  # frame indices where a new shot starts (0 always)
    detector_calls: int
    landmarks: dict[int, tuple[tuple[float, float], ...]] = field(default_factory=dict)  # of detections, full-res
    followed: dict[int, tuple[float, float]] = field(default_factory=dict)  # face centre between detections, full-res
    searches: int = 0  # whole-frame searches (the expensive part of ``detector_calls``)
    most_faces: int = 0  # the most faces one whole-frame search found (what select: index can pick from)


def analysis_size(width: int, height: int) -> tuple[tuple[int, int], float]:
    """The even size frames are analysed at, and the factor back to full resolution."""
    scale = max(1.0, max(width, height) / ANALYSIS_SIDE)
    w, h = 2 * max(1, round(width / scale / 2)), 2 * max(1, round(height / scale / 2))
    return (w, h), width / w


def _box(f: Face, scale: float) -> Box:
    return Box(f.x * scale, f.y * scale, f.w * scale, f.h * scale)


def detect_faces(gray: np.ndarray, scale: float, detector: str = "haar", weights: Path | None = None) -> list[Box]:
    """Faces in an analysis frame (grey (H, W) or BGR), in full-resolution pixels (``scale`` = full / small)."""
    g = grey(gray)
    min_side = int(MIN_FACE * max(g.shape[:2]))
    return [_box(f, scale) for f in faces.detector(detector, weights).detect(g, min_side)]


def select_face(found: list[Box], face: FaceSpec) -> Box | None:
    """The face the spec's rule picks among ``found``: the largest, or the index-th from the left."""
    if not found:
        return None
    if face.select == "largest":
        return max(found, key=lambda b: b.w * b.h)
    ordered = sorted(found, key=lambda b: b.cx)
    return ordered[face.index] if face.index < len(ordered) else None


def _thumb(gray: np.ndarray) -> np.ndarray:
    return cv2.resize(gray, (64, 36), interpolation=cv2.INTER_AREA).astype(np.int16)


SEGMENT_S = 30.0  # seconds: a long video is scanned in segments of about this length, at once
MIN_RUN_S = 0.2  # seconds: shorter runs of a face get no boxes (build_track)
SAME_PERSON = 0.5  # appearance similarity (see faces.appearance) from which a face is the selected person
SAME_OTHER = 0.8  # from which two appearances of non-selected faces are taken for one person
OTHERS = 8  # other people's appearances remembered


def face_weights(face: FaceSpec) -> Path | None:
    """``spec.face.weights`` as a local file, when it is one (fetched URIs are handed to ``scan``)."""
    if face.weights is None:
        return None
    if "://" in face.weights:
        raise InvalidWeights(f"spec.face.weights {face.weights!r} must be fetched before the track runs; "
                             "this runner reads the detector's weights from a local path only", stage="track")
    return Path(face.weights.removeprefix("file:"))


def scan(frames: Iterable[np.ndarray], scale: float, face: FaceSpec, weights: Path | None = None) -> Scan:
    """One pass over analysis frames: grey uint8 (H, W) or BGR (H, W, 3), ``scale`` = full / analysis.

    Who is followed (``spec.face.select``): the rule (largest, or the index-th from the left)
    picks a person the first time faces are found; from then on that person is followed, by
    position from one detection to the next, and by appearance when re-found after leaving the
    frame, behind an occlusion or after a scene cut. Frames where only other people are visible
    get no box (they pass through untouched). ``weights``: the detector's weights file (YuNet),
    when ``spec.face.weights`` was fetched; else a local ``spec.face.weights`` is read.
    """
    return scan_segment(frames, scale, face, weights).scan


@dataclass
class Identity:
    """Who is followed: the selected person's appearance and the other people seen beside her."""

    look: np.ndarray | None = None
    others: list[np.ndarray] = field(default_factory=list)


@dataclass
class Segment:
    """A scan of frames ``first`` .. (``scan.frames`` of them, indices global), the appearance of
    the first face it chose (None: it chose none), who it followed at its end, and the thumbnails
    of its first and last frames (whether a shot changes between two segments)."""

    first: int
    scan: Scan
    first_choice: np.ndarray | None
    identity: Identity
    first_thumb: np.ndarray | None = None
    last_thumb: np.ndarray | None = None


def scan_segment(frames: Iterable[np.ndarray], scale: float, face: FaceSpec, weights: Path | None = None, *,
                 first: int = 0, carry: Identity | None = None) -> Segment:
    """``scan`` of the frames from global index ``first`` on, ``first`` starting a shot.
    ``carry``: who was followed before ``first`` (None: the selection rule picks, as at the
    start of a video)."""
    det = faces.detector(face.detector, weights if weights is not None else face_weights(face))
    every = face.detect_every
    detections: dict[int, Box | None] = {}
    cuts: list[int] = []
    calls = 0
    buffer: deque[tuple[int, np.ndarray]] = deque(maxlen=every)
    last_key: int | None = None
    previous: Face | None = None  # the selected face where last seen in this shot (analysis pixels)
    lost = True  # the last detection did not find the selected face (or a new shot began)
    look: np.ndarray | None = carry.look if carry else None  # the selected person's appearance, once chosen
    others: list[np.ndarray] = list(carry.others) if carry else []  # other people, seen in a frame beside her
    first_choice: np.ndarray | None = None
    landmarks: dict[int, tuple[tuple[float, float], ...]] = {}
    followed: dict[int, tuple[float, float]] = {}
    patch: tuple[np.ndarray, float] | None = None  # the last detected face (grey, shrunk by the factor)
    newest = 0  # the latest frame seen: only a detection there renews the patch
    ahead: Face | None = None  # where the patch was followed to in the frame before this one (analysis pixels)
    searches = 0  # whole-frame searches
    most = 0  # the most faces one search found
    empty: np.ndarray | None = None  # block means of the last frame a whole-frame search found no face in

    def detect(i: int, gray: np.ndarray) -> Box | None:
        nonlocal calls, previous, lost, look, patch, ahead, searches, empty, others, most, first_choice
        calls += 1
        chosen: Face | None = None
        if previous is not None:  # near the last face: only a box that continues it
            p = previous
            if ahead is not None and not lost:  # first where the patch was followed to, at about its size
                a = ahead
                near = [f for f in det.detect_near(gray, (a.x, a.y, a.w, a.h), 0.4, (0.8, 1.3)) if faces.iou(f, a) > 0.3]
                chosen = max(near, key=lambda f: faces.iou(f, a), default=None)
            ahead = None
            if chosen is None:
                near = [f for f in det.detect_near(gray, (p.x, p.y, p.w, p.h)) if faces.iou(f, p) > 0.2]
                chosen = max(near, key=lambda f: faces.iou(f, p), default=None)
            if chosen is not None and lost and not _same(gray, chosen, look, others):
                chosen = None  # someone else stepped into the place where the person left
        if chosen is None:  # the whole frame: the person anywhere, or the rule's first choice
            blocks = _blocks(gray)
            # nothing moved anywhere since a whole-frame search found nobody to follow: still nobody
            if not (empty is not None and empty.shape == blocks.shape and float(np.abs(blocks - empty).max()) < STILL):
                searches += 1
                found = det.detect(gray, int(MIN_FACE * max(gray.shape[:2])))
                most = max(most, len(found))
                if look is None:
                    pick = select_face([_box(f, 1.0) for f in found], face)
                    chosen = next((f for f in found if pick is not None and _box(f, 1.0) == pick), None)
                else:  # the person by appearance: like her, and more like her than like anyone seen beside her
                    scored = [(float(d @ look), f) for f in found
                              if (d := faces.appearance(gray, f.x, f.y, f.w, f.h)) is not None and _is_person(d, look, others)]
                    chosen = max(scored, key=lambda sf: sf[0], default=(0.0, None))[1]
                if chosen is not None:  # everyone else in this frame is someone else
                    others = _remember(others, [d for f in found if f is not chosen
                                                and (d := faces.appearance(gray, f.x, f.y, f.w, f.h)) is not None])
                empty = blocks if chosen is None else None
        if chosen is not None:
            d = faces.appearance(gray, chosen.x, chosen.y, chosen.w, chosen.h)
            if d is not None:
                first_choice = d if first_choice is None else first_choice
                look = d if look is None else _unit(0.8 * look + 0.2 * d)
            previous = chosen
        lost = chosen is None
        box = None if chosen is None else _box(chosen, scale)
        detections[i] = box
        landmarks.pop(i, None)
        if chosen is not None and chosen.landmarks:
            landmarks[i] = tuple((px * scale, py * scale) for px, py in chosen.landmarks)
        if chosen is not None and i >= newest:
            patch = _patch(gray, chosen)
        return box

    def follow(i: int, gray: np.ndarray) -> None:
        """Between detections: where the last detected face's patch is now (its centre, full-res)."""
        nonlocal ahead
        ahead = None
        if patch is None or previous is None or lost:
            return
        tmpl, k = patch
        p = previous
        side = max(p.w, p.h)
        x0, y0 = int(max(0, p.x - 0.5 * side)), int(max(0, p.y - 0.5 * side))
        x1, y1 = int(min(gray.shape[1], p.x + p.w + 0.5 * side)), int(min(gray.shape[0], p.y + p.h + 0.5 * side))
        win = cv2.resize(gray[y0:y1, x0:x1], None, fx=k, fy=k, interpolation=cv2.INTER_AREA) if y1 > y0 and x1 > x0 else None
        if win is None or win.shape[0] < tmpl.shape[0] or win.shape[1] < tmpl.shape[1]:
            return
        res = cv2.matchTemplate(win, tmpl, cv2.TM_CCOEFF_NORMED)
        _, best, _, (mx, my) = cv2.minMaxLoc(res)
        if best >= FOLLOW_MATCH:
            fx, fy = x0 + mx / k, y0 + my / k
            followed[i] = ((fx + p.w / 2) * scale, (fy + p.h / 2) * scale)
            ahead = Face(fx, fy, p.w, p.h, best)

    def keyframe(i: int, gray: np.ndarray) -> None:
        """Detect at ``i``; where the answer changed since the last keyframe (the face came or
        went in between), detect on every frame in between to find the change exactly."""
        nonlocal last_key, previous, lost, ahead
        before = detections.get(last_key) if last_key is not None else None
        now = detect(i, gray)
        if last_key is not None and (before is None) != (now is None):
            state, ahead = (previous, lost), None
            for j, g in buffer:
                if last_key < j < i:
                    detect(j, g)
            previous, lost = state  # the next detection continues from frame i, not from the frames before it
        last_key = i

    n = 0
    prev_thumb: np.ndarray | None = None
    first_thumb: np.ndarray | None = None
    for i, frame in enumerate(frames, first):
        n = i + 1 - first
        gray = grey(frame)
        thumb = _thumb(gray)
        first_thumb = thumb if first_thumb is None else first_thumb
        is_cut = prev_thumb is None or _changed(thumb, prev_thumb)
        prev_thumb = thumb
        if is_cut:
            if buffer and buffer[-1][0] != last_key:
                keyframe(*buffer[-1])  # the old shot's last frame anchors its tail
            cuts.append(i)
            previous, last_key, lost, ahead, empty = None, None, True, None, None
            buffer.clear()
        newest = i
        if is_cut or i % every == 0 or i == first:
            keyframe(i, gray)
        else:
            follow(i, gray)
        buffer.append((i, gray))
    if buffer and buffer[-1][0] != last_key:
        keyframe(*buffer[-1])  # the last frame anchors the tail
    sc = Scan(n, detections, cuts or [0] if first == 0 else cuts, calls, landmarks,
              {k: v for k, v in followed.items() if k not in detections}, searches, most)
    return Segment(first, sc, first_choice, Identity(look, others), first_thumb, prev_thumb)


def _changed(thumb: np.ndarray, before: np.ndarray) -> bool:
    """Whether two consecutive frames' thumbnails are different shots."""
    return float(np.abs(thumb - before).mean()) > CUT_THRESHOLD


def segment_starts(n_frames: int, fps: float, every: int, seconds: float = SEGMENT_S) -> list[int]:
    """Where the segments of a long video's scan start: every ``seconds`` (rounded to a multiple of
    ``every``, so each start is a detection frame of a whole-video scan too); [0] for a video
    shorter than two segments. A fixed grid: the track does not depend on the machine's cores."""
    length = max(every, int(round(seconds * fps / every)) * every)
    if n_frames < 2 * length:
        return [0]
    return list(range(0, n_frames - length // 2, length))


def scan_segments(read: Callable[[int, int | None], Iterable[np.ndarray]], starts: list[int], scale: float,
                  face: FaceSpec, weights: Path | None = None, workers: int = 1) -> Scan:
    """``scan`` of a whole video in segments scanned at once (``workers`` at a time).

    ``read(start, count)`` yields the analysis frames ``start`` .. ``start + count - 1`` (count
    None: to the end). Each segment begins as a new shot would, not knowing who was followed, so
    its rule picks (reading from its own first frame: no decode of the frames before it); the
    segments are then linked in order: a start is kept as a cut only where its first frame and
    the previous segment's last one are different shots, and a segment whose first choice is not the
    person followed before it (``_is_person``) is scanned again knowing her, and the next is
    judged against what that gives. So the person followed is the one a whole-video scan follows;
    boxes differ from it only at the segment starts, where each segment searches the whole frame.
    """
    ends = starts[1:] + [None]

    def one(k: int, carry: Identity | None = None) -> Segment:
        s, e = starts[k], ends[k]
        return scan_segment(read(s, None if e is None else e - s), scale, face, weights, first=s, carry=carry)

    with ThreadPoolExecutor(max(1, min(workers, len(starts))), thread_name_prefix="scan") as pool:
        parts = list(pool.map(one, range(len(starts))))
    redone = 0
    carry = Identity()
    for k, part in enumerate(parts):
        if k and carry.look is not None and part.first_choice is not None \
                and not _is_person(part.first_choice, carry.look, carry.others):
            parts[k] = one(k, carry)  # it picked someone else: again, knowing whom to follow
            redone += part.scan.detector_calls
        part = parts[k]
        before = parts[k - 1].last_thumb if k else None
        if before is not None and part.first_thumb is not None and not _changed(part.first_thumb, before):
            part.scan.cuts.remove(part.first)  # the same shot goes on across the segments' seam
        if part.identity.look is not None:
            carry = Identity(part.identity.look, _remember(carry.others, part.identity.others))
    planned = [(e - s) if e is not None else None for s, e in zip(starts, ends)]
    if any(p is not None and part.scan.frames != p and later.scan.frames
           for p, part, later in zip(planned, parts, parts[1:])):
        raise ValueError("a segment of the video ended early: its frame count is not what was probed")
    scans = [p.scan for p in parts]
    return Scan(
        frames=sum(sc.frames for sc in scans),
        detections={i: b for sc in scans for i, b in sc.detections.items()},
        cuts=sorted({c for sc in scans for c in sc.cuts} | {0}),
        detector_calls=redone + sum(sc.detector_calls for sc in scans),
        landmarks={i: v for sc in scans for i, v in sc.landmarks.items()},
        followed={i: v for sc in scans for i, v in sc.followed.items() if i not in sc.detections},
        searches=sum(sc.searches for sc in scans),
        most_faces=max(sc.most_faces for sc in scans),
    )


def _patch(gray: np.ndarray, f: Face) -> tuple[np.ndarray, float] | None:
    """The face's box, shrunk so the face is ``FOLLOW_FACE`` px wide, and the factor."""
    k = min(1.0, FOLLOW_FACE / max(1.0, f.w))
    x0, y0, x1, y1 = int(max(0, f.x)), int(max(0, f.y)), int(min(gray.shape[1], f.x + f.w)), int(min(gray.shape[0], f.y + f.h))
    if x1 - x0 < 8 or y1 - y0 < 8:
        return None
    return cv2.resize(gray[y0:y1, x0:x1], None, fx=k, fy=k, interpolation=cv2.INTER_AREA), k


def _blocks(gray: np.ndarray) -> np.ndarray:
    """Mean grey of 8×8 px blocks of a quarter-size copy (32 px of the analysis frame each)."""
    h, w = gray.shape[:2]
    q = cv2.resize(gray, (max(8, w // 4) // 8 * 8, max(8, h // 4) // 8 * 8), interpolation=cv2.INTER_AREA)
    return q.reshape(q.shape[0] // 8, 8, q.shape[1] // 8, 8).mean(axis=(1, 3))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(1e-9, float(np.linalg.norm(v)))


def _is_person(d: np.ndarray, look: np.ndarray, others: list[np.ndarray]) -> bool:
    """Whether appearance ``d`` is the selected person's (``look``): alike enough, and more alike
    than to any other person seen beside her (a listener who resembles her is still the listener)."""
    score = float(d @ look)
    return score >= SAME_PERSON and all(score > float(d @ o) for o in others)


def _remember(others: list[np.ndarray], new: list[np.ndarray]) -> list[np.ndarray]:
    """``others`` with the appearances ``new`` added: one that matches a known person updates it;
    at most ``OTHERS`` people are kept (the most recently seen)."""
    out = list(others)
    for d in new:
        k = max(range(len(out)), key=lambda j: float(d @ out[j]), default=None)
        if k is not None and float(d @ out[k]) >= SAME_OTHER:
            d = _unit(0.5 * out.pop(k) + 0.5 * d)
        out.append(d)
    return out[-OTHERS:]


def _same(gray: np.ndarray, f: Face, look: np.ndarray | None, others: list[np.ndarray] = ()) -> bool:  # type: ignore[assignment]
    d = faces.appearance(gray, f.x, f.y, f.w, f.h)
    return look is None or d is None or _is_person(d, look, list(others))


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
    """One crop box per frame (None: no face, the frame passes through).

    A run of frames with a face shorter than ``MIN_RUN_S`` (at least 2 frames) gets no boxes: a
    lone false detection, or a face too briefly in view to be worth a mouth.

    The box's side is one per run of frames with a face (the median face, padded). Where the
    landmarks give the mouth, the box is placed so that the mouth lands on
    ``overlay.mouth_point`` (the models draw and the mask blends there): it follows the mouth
    as the landmarks do, without the lag or lead of a smoothed box. Without landmarks: the
    smoothed centre of the face.
    """
    track: list[CropBox | None] = [None] * sc.frames
    window = max(3, int(round(fps * 0.3)) | 1)
    shortest = max(2, int(round(fps * MIN_RUN_S)))
    keys = sorted(sc.detections)
    marks = sorted(sc.landmarks)
    for start, end in _shots(sc.cuts, sc.frames):
        boxes = _fill(sc.detections, keys, start, end, bridge=3 * every)
        for a, b in _runs(boxes):
            if b - a < shortest:  # a face for a blink: a false detection, or too short to be worth a mouth
                continue
            run = [bx for bx in boxes[a:b] if bx is not None]
            # between detections, the centre where the face's patch was followed to, else the line
            centres = [sc.followed.get(start + a + k, (bx.cx, bx.cy)) for k, bx in enumerate(run)]
            cx = _smooth(np.array([c[0] for c in centres]), window)
            cy = _smooth(np.array([c[1] for c in centres]), window)
            side = float(np.median([max(bx.w, bx.h) for bx in run])) * (1 + 2 * padding)
            size = int(round(side / 2)) * 2
            points = _landmarks(sc, marks, start + a, run, centres)
            mx, my = overlay.mouth_point(size, padding)
            for k, (x, y) in enumerate(zip(cx, cy)):
                box = CropBox(int(round(x - size / 2)), int(round(y - size / 2)), size, points[k])
                mouth = box.mouth
                if mouth is not None:  # the landmarks' mouth lands where the models and the mask expect it
                    box = CropBox(int(round(mouth[0] - mx)), int(round(mouth[1] - my)), size, points[k])
                track[start + a + k] = box
    return track


def _landmarks(sc: Scan, marks: list[int], first: int, run: list[Box], centres: list[tuple[float, float]]
               ) -> list[tuple[tuple[float, float], ...]]:
    """Per-frame landmarks for one run of boxes starting at frame ``first``.

    Between two detections with landmarks: interpolated (a zoom or a turn is smooth), then moved
    by how far the followed face is from the interpolated path (a sudden move is not). Before the
    run's first or after its last: the nearest detection's, moved with the face. Unsmoothed, so
    they never lag or lead the face.
    """
    n = len(run)
    inside = marks[bisect_left(marks, first):bisect_left(marks, first + n)]
    if not inside:
        return [()] * n
    out: list[tuple[tuple[float, float], ...]] = []
    pos = 0  # inside[pos - 1] <= frame < inside[pos]
    for k in range(n):
        j = first + k
        while pos < len(inside) and inside[pos] <= j:
            pos += 1
        lo = inside[pos - 1] if pos > 0 else None
        hi = inside[pos] if pos < len(inside) else None
        if lo == j:
            out.append(sc.landmarks[j])
            continue
        cx, cy = centres[k]
        if lo is not None and hi is not None and len(sc.landmarks[lo]) == len(sc.landmarks[hi]):
            t = (j - lo) / (hi - lo)
            pts = [(u[0] + t * (v[0] - u[0]), u[1] + t * (v[1] - u[1])) for u, v in zip(sc.landmarks[lo], sc.landmarks[hi])]
            (ax, ay), (bx, by) = centres[lo - first], centres[hi - first]
            dx, dy = cx - (ax + t * (bx - ax)), cy - (ay + t * (by - ay))
        else:
            near = lo if lo is not None else hi
            assert near is not None
            pts = list(sc.landmarks[near])
            dx, dy = cx - centres[near - first][0], cy - centres[near - first][1]
        out.append(tuple((px + dx, py + dy) for px, py in pts))
    return out


def jitter(track: list[CropBox | None]) -> float:
    """Mean frame-to-frame movement of the box centre, as a fraction of its side."""
    steps = [
        np.hypot(b.x - a.x, b.y - a.y) / a.size
        for a, b in zip(track, track[1:])
        if a is not None and b is not None and a.size == b.size
    ]
    return round(float(np.mean(steps)), 5) if steps else 0.0


def to_json(sc: Scan, boxes: list[CropBox | None], *, width: int, height: int, fps: float, face: FaceSpec,
            padding: float) -> dict:
    """The track as a JSON-ready dict: what the render will crop, per frame, and why.

    ``frames[i]``: null (the frame passes through) or ``{"box": [x, y, size], "landmarks":
    [[x, y], ...], "mouth": [x, y] | null}``, full-resolution pixels; ``detections``: the
    detector's own boxes ``[x, y, w, h]`` (null: looked, found no selected face) by frame;
    ``cuts``: the frames where a shot starts.
    """
    def r(v: float) -> float:
        return round(float(v), 2)

    return {
        "version": 1,
        "width": width, "height": height, "fps": fps, "frames_total": sc.frames,
        "face": face.model_dump(by_alias=True, exclude_none=True, exclude={"padding"}, mode="json"), "padding": padding,
        "cuts": list(sc.cuts), "detector_calls": sc.detector_calls,
        "detections": {str(k): (None if b is None else [r(b.x), r(b.y), r(b.w), r(b.h)])
                       for k, b in sorted(sc.detections.items())},
        "frames": [None if b is None else {
            "box": [b.x, b.y, b.size],
            "landmarks": [[r(x), r(y)] for x, y in b.landmarks],
            "mouth": None if b.mouth is None else [r(v) for v in b.mouth],
        } for b in boxes],
        "jitter": jitter(boxes),
    }


BOX_COLOUR, MOUTH_COLOUR, POINT_COLOUR = (0, 255, 0), (0, 0, 255), (255, 255, 0)  # BGR


def draw(frame: np.ndarray, box: CropBox | None) -> np.ndarray:
    """``frame`` (BGR, full resolution) with the crop box (green), its landmarks (cyan) and the
    mouth centre (red) drawn on it, in place; unchanged where ``box`` is None."""
    if box is None:
        return frame
    t = max(2, frame.shape[1] // 480)
    cv2.rectangle(frame, (box.x, box.y), (box.x + box.size - 1, box.y + box.size - 1), BOX_COLOUR, t)
    for px, py in box.landmarks:
        cv2.circle(frame, (int(round(px)), int(round(py))), 2 * t, POINT_COLOUR, -1)
    if box.mouth is not None:
        cv2.drawMarker(frame, (int(round(box.mouth[0])), int(round(box.mouth[1]))), MOUTH_COLOUR, cv2.MARKER_CROSS, 8 * t, t)
    return frame
