"""Chunked renders: chunks joined equal one render frame for frame, resume after SIGKILL renders
only what was missing, workers and shards split the work, S3 as the work area."""

from __future__ import annotations

import json
import os
import signal
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lipsync.chunks import plan_chunks, shard
from lipsync.video.source import source_index

from . import s3server
from .media import RUNNER, job_file, speech
from .test_render_engine import index_of, stamp_index

pytestmark = pytest.mark.slow
W, H, FPS = 320, 240, 25


def indexed_face_clip(dest: Path, n: int, cut_at: int) -> Path:
    """A face clip whose frames carry their own index (bit blocks on the top rows, away from the
    face), with a scene cut (the picture mirrored) at ``cut_at``."""
    from lipsync.sample import VideoRecipe, make_video

    face = make_video(dest.with_name("face-src.mp4"), VideoRecipe(width=W, height=H, fps=FPS, seconds=n / FPS + 0.2,
                                                                   face_width=0.45))
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(face), "-frames:v", str(n), "-f", "rawvideo",
                          "-pix_fmt", "bgr24", "-"], capture_output=True, check=True).stdout
    frames = np.frombuffer(raw, np.uint8).reshape(-1, H, W, 3).copy()
    assert len(frames) == n
    proc = subprocess.Popen(["ffmpeg", "-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{W}x{H}",
                             "-r", str(FPS), "-i", "-", "-c:v", "libx264", "-crf", "14", "-g", "30", "-pix_fmt",
                             "yuv420p", str(dest)], stdin=subprocess.PIPE)
    assert proc.stdin is not None
    for i, f in enumerate(frames):
        if i >= cut_at:
            f = f[:, ::-1].copy()
        proc.stdin.write(stamp_index(f, i).tobytes())
    proc.stdin.close()
    assert proc.wait() == 0
    return dest


def decoded(path: Path) -> np.ndarray:
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "gray", "-"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, H, W)


def pts_steps(path: Path) -> set[float]:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries", "packet=pts_time",
                          "-of", "csv=p=0", str(path)], capture_output=True, text=True, check=True).stdout
    pts = sorted(float(x) for x in out.split())
    return {round(b - a, 4) for a, b in zip(pts, pts[1:])}


def run(folder: Path, name: str, video: Path, audio: Path, *args: str, uri: str | None = None, **spec):
    job = job_file(folder, name=name, video=str(video), audio=str(audio),
                   output={"uri": uri or str(folder / name), "preset": "ultrafast"}, **spec)
    env = {**os.environ, "PYTHONPATH": str(RUNNER), "LIPSYNC_RESULT_FILE": str(folder / f"{name}.result.json")}
    env.pop("GLIBC_TUNABLES", None)
    return subprocess.run([sys.executable, "-m", "lipsync.cli", "run", "--log-format", "json", *args, str(job)],
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("chunk-media")
    # 76 frames: 1 s chunks (25 frames) put boundaries at 25 and 50 inside the face, the cut at 40
    # inside chunk 1, and a last chunk of exactly one frame.
    return {"video": indexed_face_clip(d / "indexed.mp4", 76, cut_at=40),
            "short": speech(d / "short.wav", text="Hi there."),
            "long": speech(d / "long.wav", text="Hello there, this is a test of the lip sync runner with long speech.")}


@pytest.mark.parametrize("follow", ["video", "audio"])
def test_chunks_equal_one_render_frame_for_frame(media, tmp_path, follow):
    audio = media["long"] if follow == "audio" else media["short"]
    one = run(tmp_path, "one", media["video"], audio, timing={"follow": follow}, render={"chunkSeconds": 3600})
    many = run(tmp_path, "many", media["video"], audio, timing={"follow": follow}, render={"chunkSeconds": 1})
    assert one.returncode == 0 and many.returncode == 0, one.stdout[-2000:] + many.stdout[-2000:]
    m_one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m_many = json.loads((tmp_path / "many" / "metrics.json").read_text())
    n_out = m_one["output"]["frames"]
    assert m_one["chunks"]["count"] == 1 and m_many["chunks"]["count"] == -(-n_out // 25)
    if follow == "video":
        assert n_out == 76 and m_many["chunks"]["count"] == 4  # the last chunk is the last frame alone
    else:
        assert n_out > 76  # ping-pong extension across chunk boundaries
    a, b = decoded(tmp_path / "one" / "output.mp4"), decoded(tmp_path / "many" / "output.mp4")
    assert len(a) == len(b) == n_out
    expected = [source_index(i, 76) for i in range(n_out)]
    assert [index_of(f) for f in a] == expected
    assert [index_of(f) for f in b] == expected
    assert pts_steps(tmp_path / "many" / "output.mp4") == {round(1 / FPS, 4)}  # continuous timestamps
    # the pictures agree too (each chunk is its own encode: equal up to encoding noise)
    assert float(np.abs(a.astype(int) - b.astype(int)).mean()) < 1.5
    assert not list((tmp_path / "many").glob(".work-*"))  # the work area went after the publish


def chunk_done_lines(proc: subprocess.Popen, count: int) -> list[str]:
    assert proc.stdout is not None
    seen, lines = 0, []
    for line in proc.stdout:
        lines.append(line)
        if '"event": "chunk-done"' in line:
            seen += 1
            if seen >= count:
                break
    return lines


def kill_after_chunks(folder: Path, name: str, video: Path, audio: Path, chunks: int, uri: str | None = None,
                      env: dict | None = None):
    job = job_file(folder, name=name, video=str(video), audio=str(audio), timing={"follow": "video"},
                   render={"chunkSeconds": 1}, output={"uri": uri or str(folder / name),
                                                                          "preset": "ultrafast"})
    proc = subprocess.Popen([sys.executable, "-m", "lipsync.cli", "run", "--log-format", "json", str(job)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(RUNNER), **(env or {})})
    lines = chunk_done_lines(proc, chunks)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return job, lines


@pytest.mark.parametrize("store", ["folder", "s3"])
def test_resume_after_sigkill_renders_only_the_missing_chunks(media, tmp_path, monkeypatch, store):
    uri, env = None, {}
    if store == "s3":
        server_gen = s3server.running(tmp_path, monkeypatch)
        next(server_gen)
        uri, env = "s3://lipsync/renders/resume", dict(os.environ)
    total = len(plan_chunks(76, FPS, 1.0))  # 1 s chunks: 4
    job, _ = kill_after_chunks(tmp_path, "resume", media["video"], media["short"], chunks=2, uri=uri, env=env)
    again = subprocess.run([sys.executable, "-m", "lipsync.cli", "run", "--log-format", "json", str(job)],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(RUNNER)}, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:]
    reference = run(tmp_path, "reference", media["video"], media["short"], timing={"follow": "video"},
                    render={"chunkSeconds": 1})
    assert reference.returncode == 0
    if store == "s3":
        from lipsync.io import s3

        got_metrics = json.loads(s3.S3Store(uri).get("metrics.json"))
        s3.download(f"{uri}/output.mp4", tmp_path / "resumed.mp4")
        resumed = tmp_path / "resumed.mp4"
        left = [o.object_name for o in s3.client_from_env().list_objects(s3server.BUCKET, "renders/", recursive=True)]
        assert not [k for k in left if "/.work-" in k]
    else:
        got_metrics = json.loads((tmp_path / "resume" / "metrics.json").read_text())
        resumed = tmp_path / "resume" / "output.mp4"
    stats = got_metrics["chunks"]
    assert stats["count"] == total
    assert stats["reused"] >= 2 and stats["rendered"] <= total - 2 + 1
    assert np.array_equal(decoded(resumed), decoded(tmp_path / "reference" / "output.mp4"))


def test_workers_and_shards_split_the_work(media, tmp_path):
    two = run(tmp_path, "two", media["video"], media["short"], "--workers", "2", timing={"follow": "video"},
              render={"chunkSeconds": 1})
    assert two.returncode == 0, two.stdout[-3000:]
    m_two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m_two["chunks"]["workers"] == 2
    from lipsync.cli import MALLOC_TUNABLES

    assert m_two["runtime"]["glibc_tunables"] == MALLOC_TUNABLES  # `run` re-executed itself with it
    one = run(tmp_path, "one", media["video"], media["short"], "--workers", "1", timing={"follow": "video"},
              render={"chunkSeconds": 1})
    assert one.returncode == 0, one.stdout[-3000:]
    a, b = decoded(tmp_path / "two" / "output.mp4"), decoded(tmp_path / "one" / "output.mp4")
    assert [index_of(f) for f in a] == [index_of(f) for f in b] == list(range(76))
    # the workers' encoders run with fewer threads each, and x264's output depends on its thread count
    assert float(np.abs(a.astype(int) - b.astype(int)).mean()) < 1.0
    # each worker cut its chunks' preview tiles from its own frames, as one process does: the
    # stitch step read them from the work area instead of decoding the chunks again
    preview = (tmp_path / "one" / "preview.jpg").read_bytes()
    assert (tmp_path / "two" / "preview.jpg").read_bytes() == preview
    # pods of an Indexed Job: each renders its share and publishes nothing; a plain run then stitches
    for index in range(2):
        part = run(tmp_path, "pods", media["video"], media["short"], "--shard", f"{index}/2",
                   timing={"follow": "video"}, render={"chunkSeconds": 1})
        assert part.returncode == 0, part.stdout[-3000:]
        assert not (tmp_path / "pods" / "output.mp4").exists()
    final = run(tmp_path, "pods", media["video"], media["short"], timing={"follow": "video"}, render={"chunkSeconds": 1})
    assert final.returncode == 0
    stats = json.loads((tmp_path / "pods" / "metrics.json").read_text())["chunks"]
    assert stats["reused"] == stats["count"] == 4 and stats["rendered"] == 0
    assert np.array_equal(decoded(tmp_path / "pods" / "output.mp4"), decoded(tmp_path / "one" / "output.mp4"))
    assert (tmp_path / "pods" / "preview.jpg").read_bytes() == preview


def test_a_chunks_preview_tiles_are_kept_with_it_and_a_damaged_set_is_ignored(tmp_path):
    from lipsync.chunks import Chunk, WorkArea
    from lipsync.io.publish import open_store

    work = WorkArea(open_store(str(tmp_path / "work")), "k")
    stream = tmp_path / "c.mp4"
    stream.write_bytes(b"not really a video")
    rng = np.random.default_rng(1)
    tiles = [(i, rng.integers(0, 256, (240, 240, 3), np.uint8), rng.integers(0, 256, (240, 240, 3), np.uint8))
             for i in (3, 7)]
    with_tiles, without = Chunk(0, 0, 10), Chunk(1, 10, 20)
    work.put(with_tiles, stream, tiles)
    work.put(without, stream)
    got = work.tiles(with_tiles)
    assert [t[0] for t in got] == [3, 7]
    assert all(np.array_equal(g[1], t[1]) and np.array_equal(g[2], t[2]) for g, t in zip(got, tiles))
    assert work.tiles(without) == []
    assert work.tiles(Chunk(2, 20, 30)) == []  # not finished
    (tmp_path / "work" / "chunk-00000.tiles.npz").write_bytes(b"PK\x03\x04 truncated")
    assert work.tiles(with_tiles) == []  # the caller cuts them from the stitched file instead
    work.clean([with_tiles, without])
    assert not (tmp_path / "work").exists()


def test_plan_and_shards():
    chunks = plan_chunks(101, 25.0, 1.0)
    assert [(c.first, c.last) for c in chunks] == [(0, 25), (25, 50), (50, 75), (75, 100), (100, 101)]
    shares = [shard(chunks, k, 3) for k in range(3)]
    assert [c.index for s in shares for c in s] == [0, 1, 2, 3, 4] and all(shares)
    assert [c.index for c in shard(chunks, 0, 1)] == [0, 1, 2, 3, 4]


def test_workers_die_with_a_killed_parent_and_bad_worker_counts_are_refused(media, tmp_path):
    import time

    import psutil

    job = job_file(tmp_path, name="orphans", video=str(media["video"]), audio=str(media["short"]),
                   timing={"follow": "video"}, render={"chunkSeconds": 1},
                   output={"uri": str(tmp_path / "orphans"), "preset": "ultrafast"})
    proc = subprocess.Popen([sys.executable, "-m", "lipsync.cli", "run", "--log-format", "json", "--workers", "2",
                             str(job)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(RUNNER), "LIPSYNC_SCRATCH": str(tmp_path)})
    chunk_done_lines(proc, 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        left = [p for p in psutil.process_iter(["cmdline"])
                if "lipsync.chunks.workers" in " ".join(p.info.get("cmdline") or [])
                and str(tmp_path) in " ".join(p.info.get("cmdline") or [])]
        if not left:
            break
        time.sleep(0.5)
    assert not left, "workers outlived their killed parent"
    bad = subprocess.run([sys.executable, "-m", "lipsync.cli", "run", "--log-format", "json", str(job)],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(RUNNER),
                                                              "LIPSYNC_WORKERS": "abc"}, timeout=300)
    assert bad.returncode == 10 and "LIPSYNC_WORKERS" in bad.stdout + bad.stderr  # InvalidSpec, not retried


def test_the_model_processes_keep_the_malloc_settings_and_ffmpeg_children_do_not(media, tmp_path):
    """`run` re-executes itself with the model's glibc tunables; its ffmpeg children (and those of
    the chunk workers) must not inherit them (an x264 that never returns memory holds ~65 MB more
    at 1080p), while the workers, which run the model, must."""
    from lipsync.malloc import MALLOC_TUNABLES

    bin_dir, seen = tmp_path / "bin", tmp_path / "seen.txt"
    bin_dir.mkdir()
    first = MALLOC_TUNABLES.split(":")[0]
    for tool in ("ffmpeg", "ffprobe"):  # the real tools, run through a wrapper that notes what they got
        real = shutil.which(tool)
        wrapper = bin_dir / tool
        wrapper.write_text(f"#!/bin/sh\n"
                           # (glibc cuts its copy of the variable in /proc/PID/environ at the first ':')
                           f"parent=$(tr '\\0' '\\n' < /proc/$PPID/environ | grep -c '^GLIBC_TUNABLES={first}')\n"
                           f"echo \"{tool} own=${{GLIBC_TUNABLES:-none}} parent=$parent\" >> {seen}\n"
                           f"exec {real} \"$@\"\n")
        wrapper.chmod(0o755)
    job = job_file(tmp_path, name="tuned", video=str(media["video"]), audio=str(media["short"]),
                   timing={"follow": "video"}, render={"chunkSeconds": 1},
                   output={"uri": str(tmp_path / "tuned"), "preset": "ultrafast"})
    env = {**os.environ, "PYTHONPATH": str(RUNNER), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop("GLIBC_TUNABLES", None)
    proc = subprocess.run([sys.executable, "-m", "lipsync.cli", "run", "--log-format", "json", "--workers", "2",
                           str(job)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    lines = seen.read_text().splitlines()
    assert len(lines) > 4 and all(" own=none " in line for line in lines), lines
    assert all(line.endswith("parent=1") for line in lines), lines  # runner and workers both started tuned
    metrics = json.loads((tmp_path / "tuned" / "metrics.json").read_text())
    assert metrics["runtime"]["glibc_tunables"] == MALLOC_TUNABLES and metrics["chunks"]["workers"] == 2
