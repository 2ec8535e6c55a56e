"""Face detectors: the shipped Haar cascades (real faces, tilted) and YuNet run from a weights file."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lipsync.errors import InvalidWeights
from lipsync.sample import background
from lipsync.spec import FaceSpec
from lipsync.video import faces, overlay
from lipsync.video.track import build_track, detect_faces, scan

from .test_track import FH, FW, analysis, place_face
from .yunet_weights import KPS, write


def tilted_clip(angles: list[float], side: float = 200) -> tuple[list[np.ndarray], float]:
    bg = background(FW, FH)
    out = []
    for a in angles:
        f = bg.copy()
        place_face(f, side, FW / 2, FH / 2)
        m = cv2.getRotationMatrix2D((FW / 2, FH / 2), a, 1.0)
        out.append(analysis(cv2.warpAffine(f, m, (FW, FH), borderMode=cv2.BORDER_REFLECT))[0])
    return out, analysis(bg)[1]


def turned(yaw: float, side: float = 0.12 * FW, mirror: bool = False) -> np.ndarray:
    """A 1080p frame with the astronaut's photograph turned by
    ``yaw`` degrees about the vertical axis through her face, as a card turns in front of a
    camera (focal length 1.5 frame widths): the foreshortening of a head turning toward profile,
    without the far eye being hidden, which a real head adds. ``mirror``: the frame flipped left
    to right (the face stays centred)."""
    from lipsync.sample import astronaut

    frame, card = background(FW, FH), np.zeros((FH, FW, 3), np.uint8)
    cx, cy = FW / 2, FH / 2
    place_face(card, side, cx, cy, astronaut())
    t, focal = np.radians(yaw), 1.5 * FW
    # the frame's corners on the card (depth: the focal length), turned about the face's vertical axis
    src = np.float32([[0, 0], [FW, 0], [FW, FH], [0, FH]])
    x, y = src[:, 0] - cx, src[:, 1] - cy
    xt, zt = x * np.cos(t), focal + x * np.sin(t)
    dst = np.float32(np.stack([cx + focal * xt / zt, cy + focal * y / zt], axis=1))
    h = cv2.getPerspectiveTransform(src, dst)
    warped = cv2.warpPerspective(card, h, (FW, FH))
    covered = cv2.warpPerspective(card.any(axis=2).astype(np.uint8), h, (FW, FH)) > 0
    frame[covered] = warped[covered]
    return np.ascontiguousarray(frame[:, ::-1]) if mirror else frame  # the face stays centred


@pytest.mark.parametrize("mirror", [False, True])
@pytest.mark.parametrize("yaw", [-60, -30, -10, 0, 10, 30, 60])
def test_a_face_turned_toward_profile_is_found_as_far_as_both_eyes_show(yaw, mirror):
    """Haar's reach toward profile (README, "Face detector"): the photograph turned to ±60° (its
    width foreshortened to half) is found, plain and mirrored; bench_track.py prints the sweep
    (lost from about 75°). A real head hides its far eye sooner, and Haar needs both eyes."""
    side = 0.12 * FW
    small, scale = analysis(turned(yaw, side, mirror=mirror))
    (got,) = detect_faces(small, scale)
    assert abs(got.cx - FW / 2) < 0.15 * side and abs(got.cy - FH / 2) < 0.15 * side


@pytest.mark.parametrize("sign", [1, -1])
def test_a_head_tilting_to_30_degrees_is_followed(sign):
    angles = [sign * min(30.0, 4.0 * i) for i in range(12)]  # upright, then rolling to 30° and staying
    clip, scale = tilted_clip(angles)
    sc = scan(iter(clip), scale, FaceSpec(detect_every=1))
    for i, a in enumerate(angles):
        got = sc.detections[i]
        assert got is not None, f"lost at {a}°"
        assert abs(got.cx - FW / 2) < 40 and abs(got.cy - FH / 2) < 40  # the face turns about its own centre


def test_haar_landmarks_are_a_level_pair_of_eyes_in_the_upper_face():
    f = background(FW, FH)
    place_face(f, 240, 900, 500)
    small, scale = analysis(f)
    (face,) = faces.detector("haar").detect(small, 20)
    (rx, ry), (lx, ly) = face.landmarks
    assert face.x < rx < face.x + face.w / 2 < lx < face.x + face.w  # the person's right eye is on the image's left
    assert face.y + 0.2 * face.h < min(ry, ly) and max(ry, ly) < face.y + 0.55 * face.h and abs(ry - ly) < 0.1 * face.h


def test_grey_and_colour_frames_are_accepted_and_others_refused():
    g = np.zeros((36, 64), np.uint8)
    assert faces.grey(g) is g and faces.grey(np.zeros((36, 64, 3), np.uint8)).shape == (36, 64)
    with pytest.raises(ValueError, match="grey or .* BGR"):
        faces.grey(np.zeros((36, 64, 4), np.uint8))


# --- YuNet: OpenCV's FaceDetectorYN running a YuNet-shaped network built by the test --------------

@pytest.fixture(scope="module")
def yunet(tmp_path_factory):
    return write(tmp_path_factory.mktemp("yunet") / "yunet.onnx")


def bright_cell(shape: tuple[int, int], row: int, col: int) -> np.ndarray:
    g = np.zeros(shape, np.uint8)
    g[row * 32:(row + 1) * 32, col * 32:(col + 1) * 32] = 255
    return g


def test_yunet_boxes_and_five_landmarks_in_frame_pixels(yunet):
    (f,) = faces.detector("yunet", yunet).detect(bright_cell((256, 320), 3, 5), 10)
    assert (f.x, f.y, f.w, f.h) == (144, 80, 64, 64) and f.score == pytest.approx(1.0)
    want = [((5 + KPS[2 * i]) * 32, (3 + KPS[2 * i + 1]) * 32) for i in range(5)]
    assert np.allclose(f.landmarks, want, atol=0.01)
    # in full-resolution pixels, through the track's entry point
    (box,) = detect_faces(bright_cell((256, 320), 3, 5), 3.0, "yunet", yunet)
    assert (box.x, box.y, box.w, box.h) == (432, 240, 192, 192)


def test_a_yunet_track_from_spec_weights(yunet):
    present = [3 <= i < 13 for i in range(20)]
    clip = [bright_cell((256, 320), 3, 5) if p else np.zeros((256, 320), np.uint8) for p in present]
    spec = FaceSpec(detector="yunet", weights=str(yunet), detect_every=5)
    track = build_track(scan(iter(clip), 2.0, spec), fps=25, padding=0.25, every=5)
    assert [t is not None for t in track] == present
    # one place throughout, where the landmarks' mouth (between the corners) lands on the crop's mouth point
    (box,) = {(t.x, t.y, t.size) for t in track if t is not None}
    mouth = [((5 + (KPS[6] + KPS[8]) / 2) * 32 * 2.0, (3 + (KPS[7] + KPS[9]) / 2) * 32 * 2.0)]
    px, py = overlay.mouth_point(box[2], 0.25)
    assert np.allclose([(box[0] + px, box[1] + py)], mouth, atol=0.5)


def test_weights_that_are_not_yunet_are_refused_clearly(tmp_path):
    bad = tmp_path / "wav2lip.pth"
    bad.write_bytes(b"\x80\x02not an onnx graph" * 100)
    with pytest.raises(InvalidWeights, match=r"spec.face.weights .*wav2lip.pth.* is not a YuNet face detector"):
        faces.detector("yunet", bad)
    with pytest.raises(ValueError, match="needs spec.face.weights"):
        FaceSpec(detector="yunet")
