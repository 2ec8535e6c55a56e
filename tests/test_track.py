"""Face track on synthetic frames: sparse detection, exact entry/exit, cuts, a stable box."""

from __future__ import annotations

import numpy as np
import pytest

from lipsync.sample import _place, astronaut, background
from lipsync.spec import FaceSpec
from lipsync.video.track import Box, _fill, build_track, jitter, scan

W, H = 480, 270


def frames(face_at: list[tuple[float, float] | None], seed: int = 7) -> list[np.ndarray]:
    bg, face = background(W, H, seed), astronaut()
    out = []
    for pos in face_at:
        f = bg.copy()
        if pos is not None:
            _place(f, face, pos[0], pos[1], 1.0, 0.42 * W)
        out.append(f)
    return out


@pytest.mark.parametrize("detector", ["haar", "haar-alt2"])
def test_detects_sparsely_and_finds_entry_and_exit_exactly(detector):
    layout = [None] * 7 + [(0.5, 0.5)] * 30 + [None] * 13  # the face appears at 7 and leaves at 37
    sc = scan(frames(layout), 1.0, FaceSpec(detect_every=5, detector=detector))
    track = build_track(sc, fps=25, padding=0.25, every=5)
    assert [t is not None for t in track] == [p is not None for p in layout]
    assert sc.detector_calls < len(layout) / 2  # not every frame
    assert jitter(track) < 0.005  # a still face: the box all but stands still (under 0.5 % of its side a frame)


def test_scene_cut_starts_a_new_shot_and_redetects():
    layout = [(0.35, 0.5)] * 20 + [(0.65, 0.5)] * 20
    clip = frames(layout[:20]) + frames(layout[20:], seed=99)  # a different background: a cut
    sc = scan(clip, 1.0, FaceSpec(detect_every=10))
    assert sc.cuts == [0, 20] and 20 in sc.detections
    track = build_track(sc, fps=25, padding=0.25, every=10)
    before, after = track[19], track[20]
    assert before is not None and after is not None
    assert after.x - before.x > 0.2 * W  # no smoothing across the cut: the box jumps with the face


def test_moving_face_is_interpolated_and_smooth():
    layout = [(0.3 + 0.4 * i / 49, 0.5) for i in range(50)]
    sc = scan(frames(layout), 1.0, FaceSpec(detect_every=5))
    track = build_track(sc, fps=25, padding=0.25, every=5)
    assert all(t is not None for t in track)
    xs = np.array([t.x + t.size / 2 for t in track])
    assert np.all(np.diff(xs[3:-3]) >= 0)  # follows the motion, monotonically
    assert len({t.size for t in track}) == 1  # one box size per shot
    assert abs(xs[25] - 0.5 * W) < 0.05 * W


def test_selects_the_requested_face():
    two = frames([(0.25, 0.5)] * 10)
    for f, g in zip(two, frames([(0.75, 0.5)] * 10)):
        f[:, W // 2:] = g[:, W // 2:]
    left = build_track(scan(two, 1.0, FaceSpec(select="index", index=0)), fps=25, padding=0.25, every=5)
    right = build_track(scan(two, 1.0, FaceSpec(select="index", index=1)), fps=25, padding=0.25, every=5)
    assert left[5].x + left[5].size / 2 < W / 2 < right[5].x + right[5].size / 2


def test_gaps_are_interpolated_linearly_bridged_when_short_and_left_open_when_long():
    b = lambda x, w=40.0: Box(x, 20.0, w, w)  # noqa: E731
    det: dict[int, Box | None] = {0: b(0), 4: b(8), 6: None, 10: b(20), 12: None, 30: b(20), 40: b(60, 80), 41: None}
    keys = sorted(det)
    out = _fill(det, keys, 0, 44, bridge=12)
    # 0 → 4: no miss between, a straight line (2 px a frame)
    assert [o.x for o in out[0:5]] == pytest.approx([0, 2, 4, 6, 8])
    # 4 → 10: a miss at 6, but 6 frames ≤ bridge and the boxes overlap: bridged, still a line
    assert [o.x for o in out[4:11]] == pytest.approx([8, 10, 12, 14, 16, 18, 20])
    # 10 → 30: a miss at 12 and 20 frames > bridge: the face was gone, nothing in between
    assert out[11:30] == [None] * 19 and out[30] == b(20)
    # 30 → 40: no miss between: interpolated in position and size
    assert out[35] == Box(pytest.approx(40), 20.0, pytest.approx(60), pytest.approx(60))
    # after the last hit, a miss: nothing
    assert out[40] == b(60, 80) and out[41:] == [None] * 3
    # a shot that starts mid-clip reads only its own detections
    assert _fill(det, keys, 12, 35, bridge=12)[18] == b(20) and _fill(det, keys, 12, 35, bridge=12)[:18] == [None] * 18
