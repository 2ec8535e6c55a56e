"""The render engine: pixels outside the mask reach the encoder exactly as decoded, colours keep
their declared description, the ping-pong timeline shows exactly ``source_index(i)``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from lipsync.io.probe import probe_video
from lipsync.preview import Sheet
from lipsync.render import Engine, FramePool, converter_for, layout_for, timeline_for
from lipsync.video import overlay
from lipsync.video.source import source_index
from lipsync.video.track import CropBox
from tests.media import clip, ffmpeg, job_file, speech, stream

pytestmark = pytest.mark.slow


class Invert:
    """A frame model that changes every pixel of its crops: whatever changes outside the mask is
    the engine's doing, not the model's."""

    name = "invert"
    crop_size = 64
    audio_rate = 16000

    def prepare(self, audio, fps, n_frames):
        pass

    def infer(self, crops: np.ndarray, frames: np.ndarray) -> np.ndarray:
        return 255 - crops


def raw_planes(path: Path, pix_fmt: str, width: int, height: int, sx: int = 1, sy: int = 1) -> list[tuple]:
    """Every frame's (Y, U, V) as ffmpeg itself decodes ``path`` (independent of the engine)."""
    data = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", pix_fmt, "-"],
                          capture_output=True, check=True).stdout
    return split(data, pix_fmt, width, height, sx, sy)


def split(data: bytes, pix_fmt: str, width: int, height: int, sx: int = 1, sy: int = 1) -> list[tuple]:
    dtype = np.dtype("<u2") if "10" in pix_fmt else np.dtype(np.uint8)
    cw, ch = (width + sx) >> sx, (height + sy) >> sy
    n_y, n_c = width * height, cw * ch
    arr = np.frombuffer(data, dtype)
    per = n_y + 2 * n_c
    out = []
    for k in range(len(arr) // per):
        f = arr[k * per:(k + 1) * per]
        out.append((f[:n_y].reshape(height, width), f[n_y:n_y + n_c].reshape(ch, cw),
                    f[n_y + n_c:].reshape(ch, cw)))
    return out


def mask_planes(box: CropBox, padding: float, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Where the engine may write: luma pixels under the mask, and chroma samples any of whose
    four luma pixels is under it (4:2:0)."""
    full = np.zeros((height, width), bool)
    m = overlay.mouth_mask(box.size, padding)[:, :, 0] > 0
    x0, y0 = max(0, box.x), max(0, box.y)
    x1, y1 = min(width, box.x + box.size), min(height, box.y + box.size)
    full[y0:y1, x0:x1] = m[y0 - box.y:y1 - box.y, x0 - box.x:x1 - box.x]
    chroma = full.reshape(height // 2, 2, width // 2, 2).any(axis=(1, 3))
    return full, chroma


@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuv420p10le"])
@pytest.mark.parametrize("box", [CropBox(150, 40, 180), CropBox(380, 150, 160)], ids=["inside", "past-the-edge"])
def test_pixels_outside_the_mask_reach_the_encoder_exactly_as_decoded(tmp_path, pix_fmt, box):
    src = clip(tmp_path / "face.mp4", seconds=0.6)
    if pix_fmt != "yuv420p":
        ffmpeg("-i", str(src), "-c:v", "libx264", "-crf", "10", "-pix_fmt", pix_fmt, str(tmp_path / "src.mp4"))
        src = tmp_path / "src.mp4"
    info = probe_video(src)
    assert info.bits == (10 if "10" in pix_fmt else 8)
    timeline = timeline_for(src, info, n_src=15)
    assert timeline.layout.pix_fmt == pix_fmt
    raw = tmp_path / "to-encoder.raw"
    engine = Engine(Invert(), converter_for(timeline, info), padding=0.25, batch_size=4, sheet=Sheet([]))
    written = engine.run(timeline, list(range(15)), [box] * 15, ["sh", "-c", f"cat > {raw}"])
    assert written == 15
    got = split(raw.read_bytes(), pix_fmt, info.width, info.height)
    ref = raw_planes(src, pix_fmt, info.width, info.height)[:15]
    assert len(got) == 15
    luma_mask, chroma_mask = mask_planes(box, 0.25, info.width, info.height)
    for (gy, gu, gv), (ry, ru, rv) in zip(got, ref):
        assert np.array_equal(gy[~luma_mask], ry[~luma_mask])
        assert np.array_equal(gu[~chroma_mask], ru[~chroma_mask])
        assert np.array_equal(gv[~chroma_mask], rv[~chroma_mask])
        changed = np.abs(gy.astype(int) - ry.astype(int)) > (4 if pix_fmt == "yuv420p" else 16)
        assert changed[luma_mask].mean() > 0.3  # the model's work did land inside the mask


def y_mean_outside(path: Path, region: tuple[slice, slice], width: int, height: int) -> float:
    planes = raw_planes(path, "yuv420p", width, height)
    keep = np.ones((height, width), bool)
    keep[region] = False
    return float(np.mean([y[keep].mean() for y, _, _ in planes]))


def render_job(tmp_path: Path, video: Path, **spec) -> tuple[Path, dict]:
    from lipsync.pipeline import run_job
    from lipsync.spec import load_jobs

    if not (tmp_path / "speech.wav").exists():
        speech(tmp_path / "speech.wav")
    spec.setdefault("timing", {"follow": "video"})
    job = load_jobs(job_file(tmp_path, video=str(video), audio=str(tmp_path / "speech.wav"), **spec))[0]
    result = run_job(job, base_dir=tmp_path)
    return Path(result.artifacts["video"]), json.loads(Path(result.artifacts["metrics"]).read_text())


def test_delivered_luma_outside_the_face_matches_a_plain_reencode(tmp_path):
    src = clip(tmp_path / "face.mp4", seconds=1.0)
    out, metrics = render_job(tmp_path, src, output={"uri": str(tmp_path / "out"), "preset": "ultrafast", "crf": 18})
    plain = tmp_path / "plain.mp4"
    ffmpeg("-i", str(src), "-c:v", "libx264", "-crf", "18", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(plain))
    w, h = 480, 270
    face = (slice(0, h), slice(int(0.2 * w), int(0.8 * w)))  # the face and around it, left out
    assert abs(y_mean_outside(out, face, w, h) - y_mean_outside(plain, face, w, h)) < 0.1


def patched_clip(tmp_path: Path, name: str, *, matrix: str, colour_range: str = "tv") -> Path:
    """The face clip with an orange patch in its corner, converted with ``matrix`` and tagged."""
    src = clip(tmp_path / "face.mp4", seconds=0.6)
    dest = tmp_path / name
    pix = "yuvj420p" if colour_range == "pc" else "yuv420p"
    ffmpeg("-i", str(src), "-vf",
           f"drawbox=x=10:y=10:w=60:h=60:color=0xDF6B44:t=fill,scale=out_color_matrix={matrix}:out_range={colour_range}",
           "-c:v", "libx264", "-crf", "12", "-preset", "ultrafast", "-pix_fmt", pix,
           "-colorspace", matrix if matrix != "bt601" else "smpte170m",
           "-color_primaries", "bt709" if matrix == "bt709" else "smpte170m",
           "-color_trc", "bt709" if matrix == "bt709" else "smpte170m", "-color_range", colour_range, str(dest))
    return dest


@pytest.mark.parametrize("matrix,colour_range", [("bt709", "tv"), ("bt601", "tv"), ("bt709", "pc")])
def test_declared_colour_is_kept_and_the_patch_keeps_its_colour(tmp_path, matrix, colour_range):
    src = patched_clip(tmp_path, "tagged.mp4", matrix=matrix, colour_range=colour_range)
    out, _ = render_job(tmp_path, src)
    s_in, s_out = stream(src, "video"), stream(out, "video")
    for key in ("color_space", "color_primaries", "color_transfer", "color_range"):
        assert s_out.get(key) == s_in.get(key), key
    # the patch's samples, as decoded (same matrix on both sides): equal up to encoding noise
    pix = s_in["pix_fmt"]  # yuvj420p stays full range: decode both sides without a range change
    assert s_out["pix_fmt"] == pix
    got = raw_planes(out, pix, 480, 270)
    ref = raw_planes(src, pix, 480, 270)
    for (gy, gu, gv), (ry, ru, rv) in zip(got[::5], ref[::5]):
        for g, r, sl in ((gy, ry, np.s_[20:60, 20:60]), (gu, ru, np.s_[10:30, 10:30]), (gv, rv, np.s_[10:30, 10:30])):
            assert abs(float(g[sl].mean()) - float(r[sl].mean())) < 1.0


def indexed_clip(dest: Path, n: int, *extra: str) -> Path:
    """Frames that carry their own index: bit b of i is a white or black block on the top row."""
    w, h = 320, 240
    proc = subprocess.Popen(["ffmpeg", "-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "gray", "-s", f"{w}x{h}",
                             "-r", "25", "-i", "-", *extra, "-pix_fmt", "yuv420p", str(dest)], stdin=subprocess.PIPE)
    assert proc.stdin is not None
    for i in range(n):
        proc.stdin.write(stamp_index(np.full((h, w), 90, np.uint8), i).tobytes())
    proc.stdin.close()
    assert proc.wait() == 0
    return dest


def stamp_index(frame: np.ndarray, i: int) -> np.ndarray:
    """``frame`` (grey or BGR, 320+ px wide) with ``i`` written in its top 32 rows: bit b is a
    white or black 32 px block (read back with ``index_of``, robust to compression)."""
    frame[0:32] = 90
    for b in range(10):
        frame[0:32, b * 32:(b + 1) * 32] = 255 if i >> b & 1 else 0
    return frame


def index_of(y: np.ndarray) -> int:
    return sum(1 << b for b in range(10) if y[16, b * 32 + 16] > 128)


@pytest.mark.parametrize("container,extra", [("mp4", ("-g", "50", "-bf", "2")), ("mkv", ("-g", "50",)),
                                             ("ts", ("-g", "40",)), ("mkv", ("-g", "30", "-output_ts_offset", "1.5"))],
                         ids=["mp4", "mkv", "ts", "mkv-starting-at-1.5s"])
def test_ping_pong_shows_exactly_source_index(tmp_path, monkeypatch, container, extra):
    src = indexed_clip(tmp_path / f"indexed.{container}", 60, *extra)
    monkeypatch.setenv("LIPSYNC_WINDOW_MB", "1")  # small backward windows: several per leg
    info = probe_video(src)
    timeline = timeline_for(src, info, n_src=60)
    pool = FramePool(timeline.layout, 8)
    n_out = 2 * 59 + 25  # forward, backward, forward again
    got = []
    for pic in timeline.pictures(pool, n_out):
        got.append(index_of(pic.y))
        pool.put(pic)
    assert got == [source_index(i, 60) for i in range(n_out)]
    # a read that starts in the middle of the timeline (what a chunk does) agrees with the whole one
    tail = []
    for pic in timeline.pictures(pool, n_out, first=70):
        tail.append(index_of(pic.y))
        pool.put(pic)
    assert tail == got[70:]


def test_odd_sizes_and_other_layouts():
    assert layout_for("yuv420p", 8, 481, 271).width == 482
    lay = layout_for("yuv422p10le", 10, 640, 360)
    assert (lay.pix_fmt, lay.sx, lay.sy, lay.dtype.itemsize) == ("yuv422p10le", 1, 0, 2)
    assert layout_for("nv12", 8, 64, 64).pix_fmt == "yuv420p"
    assert layout_for("p010le", 10, 64, 64).pix_fmt == "yuv420p10le"
    assert layout_for("yuvj420p", 8, 64, 64).pix_fmt == "yuvj420p"  # full range, untouched
