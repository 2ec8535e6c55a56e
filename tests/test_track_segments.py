"""A long video's face track is scanned in fixed time segments at once (video.track.scan_segments):
each segment reads exactly its frames, and the linked segments follow the same person, with the
same shots, as one scan of the whole video."""

from __future__ import annotations


import numpy as np
import pytest

from lipsync.io.probe import probe_video
from lipsync.sample import _place, astronaut, background
from lipsync.spec import FaceSpec
from lipsync.video.decode import FrameReader, analysis_command
from lipsync.video.track import build_track, scan, scan_segments, segment_starts

from .test_render_engine import index_of, indexed_clip
from .test_track import SW, SH, listener_face


@pytest.mark.parametrize("container,extra", [("mp4", ("-g", "50", "-bf", "2")),
                                             ("mkv", ("-g", "10", "-output_ts_offset", "1.5"))],
                         ids=["mp4", "mkv-starting-at-1.5s"])
def test_a_segment_reads_exactly_its_frames(tmp_path, container, extra):
    src = indexed_clip(tmp_path / f"indexed.{container}", 60, *extra)
    info = probe_video(src)
    for start, count in [(0, 10), (37, 5), (49, None), (50, 4)]:
        argv = analysis_command(src, fps=info.fps, start_time=info.start_time, size=(320, 240), pix_fmt=info.pix_fmt,
                                start_frame=start, frames=count)
        with FrameReader(argv, 320, 240, field="video", channels=1) as reader:
            got = [index_of(f) for f in reader]
        assert got == list(range(start, 60 if count is None else start + count)), (start, count)


def test_segment_starts_are_a_fixed_grid_of_detection_frames():
    assert segment_starts(1000, 25.0, 5) == [0]  # 40 s: one segment
    assert segment_starts(3000, 25.0, 5) == [0, 750, 1500, 2250]  # 120 s: every 30 s
    assert all(s % 7 == 0 for s in segment_starts(5000, 29.97, 7))
    assert segment_starts(1900, 25.0, 5) == [0, 750, 1500]  # the last segment takes the rest (400 frames)


def people(speaker_at: list[float | None], cut_at: int | None = None) -> list[np.ndarray]:
    """The speaker (the astronaut, 42 % of the width) where given, a listener on the right always;
    from ``cut_at`` on another shot (another background, the scene mirrored, the speaker lower)."""
    out = []
    for i, x in enumerate(speaker_at):
        later = cut_at is not None and i >= cut_at
        f = background(SW, SH, 99 if later else 7)
        if x is not None:
            _place(f, astronaut(), x, 0.55 if later else 0.5, 1.0, 0.42 * SW)
        f[200:284, 620:704] = listener_face()
        out.append(f[:, ::-1].copy() if later else f)  # another shot: the scene seen mirrored
    return out


def segmented(clip: list[np.ndarray], starts: list[int], face: FaceSpec, workers: int = 3):
    def read(start: int, count: int | None):
        return clip[start:None if count is None else start + count]

    return scan_segments(read, starts, 1.0, face, workers=workers)


def test_a_segment_that_starts_without_the_speaker_still_follows_her_not_the_listener():
    # the speaker is away from frame 28 to 44: the segment starting at 30 sees only the listener
    # first, so its own rule would pick him; linked, it is scanned again knowing whom to follow
    xs: list[float | None] = [0.27] * 28 + [None] * 17 + [0.27] * 45
    clip, face = people(xs), FaceSpec(select="largest", detect_every=5)
    whole = build_track(scan(iter(clip), 1.0, face), fps=25, padding=0.25, every=5)
    sc = segmented(clip, [0, 30, 60], face)
    parts = build_track(sc, fps=25, padding=0.25, every=5)
    assert sc.frames == len(clip) == len(parts)
    assert [t is not None for t in parts] == [t is not None for t in whole]
    assert all(t is None or t.x + t.size / 2 < SW / 2 for t in parts), "the listener was synced"
    assert all(a is None or abs((a.x + a.size / 2) - (b.x + b.size / 2)) <= 4 for a, b in zip(parts, whole))


def test_shots_are_the_same_as_one_scans_and_a_segment_start_is_no_cut():
    xs: list[float | None] = [0.27] * 90
    clip, face = people(xs, cut_at=30), FaceSpec(detect_every=5)
    whole = scan(iter(clip), 1.0, face)
    sc = segmented(clip, [0, 30, 60], face, workers=1)
    assert sc.cuts == whole.cuts == [0, 30]  # the cut at a segment's start is kept; the start at 60 adds none
    assert all(t is not None for t in build_track(sc, fps=25, padding=0.25, every=5))


def test_the_same_segments_give_the_same_track_whatever_the_workers():
    xs: list[float | None] = [0.27] * 28 + [None] * 17 + [0.27] * 45
    clip, face = people(xs), FaceSpec(detect_every=5)
    assert segmented(clip, [0, 30, 60], face, workers=1) == segmented(clip, [0, 30, 60], face, workers=3)


@pytest.mark.slow
def test_a_long_video_is_scanned_in_segments_and_tracked_like_one_scan(tmp_path):
    from lipsync.pipeline import scan_video
    from lipsync.sample import VideoRecipe, make_video
    from lipsync.video.decode import decode_command

    video = make_video(tmp_path / "long.mp4", VideoRecipe(width=320, height=240, fps=25.0, seconds=64, face_width=0.45))
    info = probe_video(video)
    face = FaceSpec(detect_every=5)
    assert len(segment_starts(info.frames_estimate, 25.0, 5)) == 2
    sc = scan_video(video, info, face)
    argv = decode_command(video, fps=info.fps, start_time=info.start_time, pix_fmt="gray", analysis_of=info.pix_fmt)
    with FrameReader(argv, 320, 240, field="video", channels=1) as reader:
        whole = scan(reader, 1.0, face)
    assert sc.frames == whole.frames == 1600
    a, b = (build_track(s, fps=25, padding=0.25, every=5) for s in (sc, whole))
    assert [t is not None for t in a] == [t is not None for t in b]
    moved = [abs((x.x + x.size / 2) - (y.x + y.size / 2)) for x, y in zip(a, b) if x is not None and y is not None]
    assert max(moved) <= 4 and np.mean(moved) < 0.5  # the same track but at the one segment start
