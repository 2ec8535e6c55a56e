"""Face track on synthetic frames: sparse detection, exact entry/exit, cuts, a stable box."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from skimage import data

from lipsync.sample import _place, astronaut, background
from lipsync.spec import FaceSpec
from lipsync.video import overlay
from lipsync.video.track import Box, _fill, analysis_size, build_track, detect_faces, jitter, scan

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


# --- real faces at 1080p, analysed as the render engine feeds them: grey, at analysis size ---------

FW, FH = 1920, 1080
FACE_IN_CROP = (116, 66, 95)  # the astronaut's face box (x, y, side) in sample.astronaut()'s 360 px wide crop


def place_face(canvas: np.ndarray, face_side: float, cx: float, cy: float, img: np.ndarray | None = None) -> tuple[float, float]:
    """Draws the astronaut so that her face box is ``face_side`` px wide, centred at (cx, cy) px."""
    img = astronaut() if img is None else img
    fx, fy, fs = FACE_IN_CROP
    k = face_side / fs
    h, w = canvas.shape[:2]
    # sample._place centres the whole crop at a fraction of the frame; move it so the face lands at (cx, cy)
    ccx, ccy = cx - (fx + fs / 2 - img.shape[1] / 2) * k, cy - (fy + fs / 2 - img.shape[0] / 2) * k
    _place(canvas, img, ccx / w, ccy / h, 1.0, img.shape[1] * k)
    return cx, cy


def analysis(frame: np.ndarray) -> tuple[np.ndarray, float]:
    (w, h), scale = analysis_size(frame.shape[1], frame.shape[0])
    return cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), (w, h), interpolation=cv2.INTER_AREA), scale


def tile(texture: np.ndarray) -> np.ndarray:
    reps = (FH // texture.shape[0] + 1, FW // texture.shape[1] + 1)
    return np.ascontiguousarray(np.dstack([np.tile(texture, reps)[:FH, :FW]] * 3))


def test_a_face_4_percent_of_1080p_is_found_in_every_frame():
    side = 0.04 * FW  # 77 px: Haar on a 640 px copy never found it
    bg, centres, clip = background(FW, FH), [], []
    for i in range(12):
        f = bg.copy()
        centres.append(place_face(f, side, 700 + 9 * i, 600 - 4 * i))
        clip.append(analysis(f)[0])
    scale = analysis(bg)[1]
    sc = scan(iter(clip), scale, FaceSpec(detect_every=1))
    assert sc.detector_calls == 12
    for i, (cx, cy) in enumerate(centres):
        got = sc.detections[i]
        assert got is not None, f"frame {i}"
        assert abs(got.cx - cx) < 0.2 * side and abs(got.cy - cy) < 0.2 * side and 0.7 < got.w / side < 1.4


@pytest.mark.parametrize("name", ["sample-7", "sample-3", "brick", "gravel"])
def test_no_face_is_drawn_on_a_textured_background_and_the_real_one_is_found(name):
    bg = background(FW, FH, int(name[7:])) if name.startswith("sample") else tile(getattr(data, name)())
    small, scale = analysis(bg)
    assert detect_faces(small, scale) == []
    side = 0.1 * FW
    cx, cy = place_face(bg, side, 1300, 520)
    small, scale = analysis(bg)
    (got,) = detect_faces(small, scale)  # the real face, and nothing in the texture
    assert abs(got.cx - cx) < 0.15 * side and abs(got.cy - cy) < 0.15 * side


def test_grey_and_bgr_analysis_frames_give_the_same_track():
    layout = [(0.4 + 0.005 * i, 0.5) for i in range(15)]
    bgr = frames(layout)
    a = build_track(scan(iter(bgr), 1.0, FaceSpec()), fps=25, padding=0.25, every=5)
    b = build_track(scan((cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in bgr), 1.0, FaceSpec()), fps=25, padding=0.25, every=5)
    assert a == b and all(t is not None for t in a)


# --- who is followed: the selected person, across gaps and cuts ----------------------------------

SW, SH = 854, 480


def listener_face(index: int = 2, side: int = 84) -> np.ndarray:
    """Another real person: a face from scikit-image's LFW sample, grey, ``side`` px square."""
    img = cv2.resize((data.lfw_subset()[index] * 255).astype(np.uint8), (side, side), interpolation=cv2.INTER_CUBIC)
    return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)


def two_people(speaker_x: float | None, seed: int = 7, listener: bool = True) -> np.ndarray:
    f = background(SW, SH, seed)
    if speaker_x is not None:  # the speaker: the astronaut, 42 % of the width
        _place(f, astronaut(), speaker_x, 0.5, 1.0, 0.42 * SW)
    if listener:  # the listener, on the right, a smaller face than the speaker's (94 px)
        f[200:284, 620:704] = listener_face()
    return f


def test_the_speaker_is_reacquired_after_a_one_second_exit_and_the_listener_never_synced():
    # 25 fps: the speaker in view for 30 frames, slides out left, is gone for a second, comes back
    xs: list[float | None] = [0.27] * 30 + [0.27 - 0.1 * k for k in range(1, 6)] + [None] * 25 + [0.27] * 40
    clip = [two_people(x) for x in xs]
    sc = scan(iter(clip), 1.0, FaceSpec(select="largest", detect_every=5))
    track = build_track(sc, fps=25, padding=0.25, every=5)
    centres = [None if t is None else t.x + t.size / 2 for t in track]
    assert all(c is None or c < SW / 2 for c in centres), "the listener (right) was synced"
    assert all(c is not None for c in centres[:30]) and all(c is not None for c in centres[62:])  # back on the speaker
    assert all(c is None for c in centres[38:60])  # gone: untouched, though the listener is in view


def look_alike(side: int) -> np.ndarray:
    """A listener who looks much like the speaker: her own photograph mirrored, widened 1.3x and
    tinted warmer and darker (the same face to a descriptor, nearly)."""
    face = cv2.resize(cv2.flip(astronaut(), 1), (int(side * 1.3), side), interpolation=cv2.INTER_AREA)
    return (face * np.array([0.7, 0.8, 1.0])).clip(0, 255).astype(np.uint8)


def test_a_listener_who_looks_like_the_speaker_is_not_taken_for_her_while_she_is_gone():
    listener = look_alike(150)
    xs: list[float | None] = [0.25] * 30 + [None] * 25 + [0.25] * 35
    clip = []
    for x in xs:
        f = background(SW, SH, 7)
        if x is not None:
            _place(f, astronaut(), x, 0.5, 1.0, 0.42 * SW)
        f[250:250 + listener.shape[0], 620:620 + listener.shape[1]] = listener
        clip.append(f)
    track = build_track(scan(iter(clip), 1.0, FaceSpec(select="largest", detect_every=5)), fps=25, padding=0.25, every=5)
    centres = [None if t is None else t.x + t.size / 2 for t in track]
    assert all(c is None or c < SW / 2 for c in centres), "the listener (right) was synced"
    assert all(c is None for c in centres[30:55])  # she is gone: nobody is synced
    assert all(c is not None for c in centres[:30]) and all(c is not None for c in centres[57:])  # back on her


def test_a_shot_with_only_another_person_is_left_untouched():
    shots = [two_people(0.27, seed=7, listener=False)] * 15 + [two_people(None, seed=99)] * 15 + [two_people(0.3, seed=5)] * 15
    sc = scan(iter(shots), 1.0, FaceSpec(select="largest", detect_every=5))
    assert sc.cuts == [0, 15, 30]
    track = build_track(sc, fps=25, padding=0.25, every=5)
    assert all(t is not None for t in track[:15])
    assert track[15:30] == [None] * 15  # only the listener here: not the selected person
    assert all(t is not None and t.x + t.size / 2 < SW / 2 for t in track[30:])  # the speaker, found by appearance


def test_select_index_picks_by_position_then_follows_that_person():
    clip = [two_people(0.27)] * 10 + [two_people(None)] * 10 + [two_people(0.27)] * 10
    track = build_track(scan(iter(clip), 1.0, FaceSpec(select="index", index=1, detect_every=5)), fps=25, padding=0.25, every=5)
    assert all(t is not None and t.x + t.size / 2 > SW / 2 for t in track)  # the listener (second from the left), throughout


# --- the mouth: landmarks carried per frame ------------------------------------------------------

MOUTH_IN_CROP = (165, 146)  # the astronaut's mouth centre in sample.astronaut()'s crop (read off the photo)


def mouth_clip(path: list[tuple[float, float, float]], w: int = 960, h: int = 540) -> tuple[list[np.ndarray], list[tuple[float, float]]]:
    """Frames with the astronaut's face box ``side`` px wide centred at (cx, cy), and where her mouth is."""
    bg, out, mouths = background(w, h), [], []
    fx, fy, fs = FACE_IN_CROP
    for cx, cy, side in path:
        f = bg.copy()
        place_face(f, side, cx, cy)
        k = side / fs
        mouths.append((cx + (MOUTH_IN_CROP[0] - (fx + fs / 2)) * k, cy + (MOUTH_IN_CROP[1] - (fy + fs / 2)) * k))
        out.append(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY))
    return out, mouths


def mouth_errors(path: list[tuple[float, float, float]]) -> list[float]:
    """Per frame: how far the centre of the mouth region (where the mask is centred and the model
    draws: the crop's ``mouth_point``) is from the true mouth, in face widths. The landmarks'
    own mouth estimate must agree with it."""
    clip, truth = mouth_clip(path)
    track = build_track(scan(iter(clip), 1.0, FaceSpec(detect_every=5)), fps=25, padding=0.25, every=5)
    errs = []
    for t, (mx, my), (_, _, side) in zip(track, truth, path):
        assert t is not None and t.mouth is not None
        px, py = overlay.mouth_point(t.size, 0.25)
        assert np.hypot(t.x + px - t.mouth[0], t.y + py - t.mouth[1]) <= 0.75  # the crop is placed on the mouth
        errs.append(float(np.hypot(t.x + px - mx, t.y + py - my) / side))
    return errs


def test_the_mask_is_centred_on_the_mouth_point():
    for size in (96, 150, 257):
        m = overlay.mouth_mask(size, 0.25)[:, :, 0]
        ys, xs = np.nonzero(m > 0.5)
        px, py = overlay.mouth_point(size, 0.25)
        assert abs(xs.mean() - px) < 1 and abs(ys.mean() - py) < 1


def test_the_mouth_follows_a_sudden_move():
    # still for 12 frames, then 10 px a frame to the right: the move starts between two detections
    path = [(400.0 + 10 * max(0, i - 12), 260.0, 120.0) for i in range(30)]
    errs = mouth_errors(path)
    assert max(errs) < 0.05, [round(e, 3) for e in errs]


def test_the_mouth_follows_a_zoom_out():
    path = [(480.0, 260.0, 160.0 - 3 * i) for i in range(30)]  # the face shrinks from 160 to 73 px
    errs = mouth_errors(path)
    assert max(errs) < 0.05, [round(e, 3) for e in errs]


def test_lipsync_track_writes_the_track_as_json(tmp_path):
    from .media import clip, run_cli

    video = clip(tmp_path / "face.mp4", seconds=1.0)
    out = tmp_path / "track.json"
    drawn = tmp_path / "track.mp4"
    proc = run_cli("track", str(video), "--json", str(out), "--overlay", str(drawn))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    # the overlay: the same frames, the crop box drawn in green where the JSON says it is
    from .media import frames

    pics = frames(drawn)
    assert len(pics) == 25
    x, y, size = doc["frames"][12]["box"]
    edge = pics[12][y + size // 4: y + 3 * size // 4, x + 1].astype(int)  # the box's left side
    assert (edge[:, 1] - np.maximum(edge[:, 0], edge[:, 2]) > 100).all(), edge  # green (4:2:0 chroma blurs a 2 px line)
    assert not (tmp_path / "track.mp4.tmp.mp4").exists()
    assert doc["frames_total"] == len(doc["frames"]) == 25 and doc["cuts"] == [0] and "25 of 25 frames" in proc.stdout
    for f in doc["frames"]:
        x, y, size = f["box"]
        (rx, ry), (lx, ly) = f["landmarks"]  # haar: the eyes
        mx, my = f["mouth"]
        assert x < rx < lx < x + size and y < ry < my < y + size and ry < my  # eyes, then the mouth below, inside the crop
    assert doc["detections"]["0"] is not None and doc["face"]["detector"] == "haar"


def test_lipsync_track_refuses_bad_input_clearly(tmp_path):
    from .media import run_cli

    proc = run_cli("track", str(tmp_path / "missing.mp4"))
    assert proc.returncode == 11 and "missing.mp4" in proc.stderr
    proc = run_cli("track", str(tmp_path / "missing.mp4"), "--detector", "yunet")
    assert proc.returncode == 10 and "needs --weights" in proc.stderr  # its own option's name
    proc = run_cli("track", str(tmp_path / "missing.mp4"), "--detect-every", "0")
    assert proc.returncode == 10 and "--detect-every:" in proc.stderr


def test_lipsync_track_never_writes_over_the_video_and_says_why_it_cannot_write(tmp_path):
    from .media import clip, run_cli

    video = clip(tmp_path / "v.mp4", seconds=0.5)
    before = video.read_bytes()
    for flag in ("--overlay", "--json"):
        proc = run_cli("track", str(video), flag, str(video))
        assert proc.returncode == 10 and "is the video itself" in proc.stderr, proc.stderr
    assert video.read_bytes() == before
    (tmp_path / "folder").mkdir()
    cases = {("--json", str(tmp_path / "nodir" / "t.json")): "does not exist",
             ("--json", str(tmp_path / "folder")): "is a folder",
             ("--overlay", str(tmp_path / "t.avi")): "ending in .mp4",
             ("--weights", str(tmp_path / "none.onnx"), "--detector", "yunet"): "does not exist"}
    for args, says in cases.items():
        proc = run_cli("track", str(video), *args)
        assert proc.returncode in (10, 11) and says in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
    assert not list(tmp_path.glob("*.tmp"))
    proc = run_cli("track", "https://example.com/v.mp4")
    assert proc.returncode == 10 and "local video file" in proc.stderr
    proc = run_cli("track", str(video), "--json", "-")  # to stdout, the summary to stderr
    assert proc.returncode == 0 and json.loads(proc.stdout)["frames_total"] > 0 and "face box" in proc.stderr


def test_an_index_past_the_faces_in_view_says_how_many_there_are():
    clip = [two_people(0.27)] * 10
    sc = scan(iter(clip), 1.0, FaceSpec(select="index", index=2, detect_every=5))
    assert sc.most_faces == 2 and not any(build_track(sc, fps=25, padding=0.25, every=5))
    from lipsync.pipeline import no_face_message

    assert "at most 2 face(s)" in no_face_message(FaceSpec(select="index", index=2), sc, "spec.video", "spec.face.index")
    with pytest.raises(ValueError, match="only read with select: index"):
        FaceSpec(index=1)  # select: largest would ignore it


def test_a_face_seen_for_a_blink_gets_no_box():
    # (the gap after it is longer than a detector's blink, 3 detection intervals, so it is not bridged)
    layout = [None] * 10 + [(0.5, 0.5)] * 2 + [None] * 20 + [(0.5, 0.5)] * 10
    track = build_track(scan(frames(layout), 1.0, FaceSpec(detect_every=5)), fps=25, padding=0.25, every=5)
    assert [t is not None for t in track] == [False] * 32 + [True] * 10  # 2 frames (0.08 s): not a mouth


def test_a_still_faceless_shot_is_searched_once_and_a_face_entering_it_is_still_found_at_once():
    layout = [None] * 33 + [(0.5, 0.5)] * 12  # a still empty room, then the face appears at 33
    sc = scan(iter(frames(layout)), 1.0, FaceSpec(detect_every=5))
    # frame 0; then not until the picture changed (35), and once looking back for the entry (31; 32 is
    # unchanged from 31, 33 and 34 are found near the face): 9 keyframes, 3 whole-frame searches
    assert sc.searches == 3
    track = build_track(sc, fps=25, padding=0.25, every=5)
    assert [t is not None for t in track] == [p is not None for p in layout]


@pytest.mark.slow
def test_a_render_that_finds_a_face_in_few_frames_says_so(tmp_path):
    from lipsync.sample import VideoRecipe, make_video

    from .media import clip, ffmpeg, job_file, run_cli, speech

    face = clip(tmp_path / "face.mp4", seconds=0.6)
    empty = make_video(tmp_path / "empty.mp4", VideoRecipe(width=480, height=270, fps=25.0, seconds=1.6, motions=()))
    video = tmp_path / "mostly-empty.mp4"
    ffmpeg("-i", str(face), "-i", str(empty), "-filter_complex", "[0:v][1:v]concat=n=2:v=1[v]", "-map", "[v]",
           "-c:v", "libx264", "-preset", "ultrafast", str(video))
    job = job_file(tmp_path, name="few", video=str(video), audio=str(speech(tmp_path / "a.wav", text="Hi.")),
                   timing={"follow": "video"})
    proc = run_cli("run", "--log-format", "json", str(job))
    assert proc.returncode == 0, proc.stdout[-2000:]
    warned = [json.loads(line) for line in proc.stdout.splitlines() if '"low-face-coverage"' in line]
    assert warned and warned[0]["level"] == "warning" and 0 < warned[0]["frames_with_face"] < warned[0]["frames"] / 2
