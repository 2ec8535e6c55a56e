"""Track once, dub many (lipsync.video.trackcache): a second job on the same video reuses the
first one's face track, skips the track pass and renders the same frames; the track is published
as track.json; a cache that is damaged, missing or unwritable never fails a job."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
from lipsync.errors import InvalidSpec
from lipsync.io import s3
from lipsync.io.probe import probe_video
from lipsync.pipeline import scan_video
from lipsync.spec import FaceSpec
from lipsync.video import trackcache

from . import s3server
from .media import RUNNER, clip, face_and_empty, job_file, speech

pytestmark = pytest.mark.slow  # renders whole clips: `-m "not slow"` skips them


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("track-cache-media")
    face_and_empty(d)
    return {"video": clip(d / "promo.mp4", seconds=1.6), "english": speech(d / "en.wav", text="Hello there."),
            "german": speech(d / "de.wav", text="Guten Tag."), "noface": d / "noface.mp4"}


def watched_tools(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose ffmpeg notes each command line in a file (then runs the real one)."""
    bin_dir, seen = tmp_path / "bin", tmp_path / "ffmpeg-calls.txt"
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / "ffmpeg"
    wrapper.write_text(f"#!/bin/sh\necho \"$*\" >> {seen}\nexec {shutil.which('ffmpeg')} \"$@\"\n")
    wrapper.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}, seen


def render(tmp_path: Path, name: str, video: Path, audio: Path, cache: str, env: dict[str, str] | None = None,
           **spec) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / name
    job = job_file(tmp_path, name=name, video=str(video), audio=str(audio), timing={"follow": "video"},
                   output={"uri": str(out), "preset": "ultrafast"}, **spec)
    proc = subprocess.run([sys.executable, "-m", "lipsync.cli", "run", "--log-format", "json", str(job)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(RUNNER), **(env or {}), "LIPSYNC_TRACK_CACHE": cache})
    return proc, out


def metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def track_decodes(seen: Path) -> int:
    """ffmpeg commands that decoded the grey analysis frames of the face track."""
    return sum("gray" in line for line in seen.read_text().splitlines()) if seen.exists() else 0


def video_frames_md5(path: Path) -> list[str]:
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:v", "-f", "framemd5", "-"],
                         capture_output=True, text=True, check=True).stdout
    return [line.rsplit(",", 1)[-1].strip() for line in out.splitlines() if not line.startswith("#")]


def test_a_second_job_on_the_same_video_reuses_the_track(media, tmp_path):
    cache = tmp_path / "tracks"
    env, seen = watched_tools(tmp_path)
    first, out1 = render(tmp_path, "english", media["video"], media["english"], str(cache), env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    assert track_decodes(seen) == 1
    m1 = metrics(out1)
    assert m1["face_track"]["track"] == "computed" and m1["face_track"]["detector_calls"] > 0
    (entry,) = cache.glob("*.json")
    assert m1["face_track"]["cache"] == str(entry)

    seen.unlink()
    again, out2 = render(tmp_path, "again", media["video"], media["english"], str(cache), env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-2000:]
    assert track_decodes(seen) == 0  # no track pass: not one analysis frame decoded
    m2 = metrics(out2)
    assert m2["face_track"]["track"] == "reused" and m2["face_track"]["detector_calls"] == 0
    assert m2["face_track"]["cache"] == str(entry)
    assert video_frames_md5(out2 / "output.mp4") == video_frames_md5(out1 / "output.mp4")
    assert (out2 / "track.json").read_bytes() == (out1 / "track.json").read_bytes()

    # The same promo dubbed into German, with other padding (the crop, not the scan): reused too.
    german, out3 = render(tmp_path, "german", media["video"], media["german"], str(cache), env, face={"padding": 0.3})
    assert german.returncode == 0, german.stdout[-3000:] + german.stderr[-2000:]
    assert metrics(out3)["face_track"]["track"] == "reused" and track_decodes(seen) == 0
    assert json.loads((out3 / "track.json").read_text())["padding"] == 0.3
    assert len(list(cache.glob("*.json"))) == 1

    # Another detector interval is another scan: computed, and kept beside the first.
    other, out4 = render(tmp_path, "every3", media["video"], media["english"], str(cache), env, face={"detectEvery": 3})
    assert other.returncode == 0, other.stdout[-3000:] + other.stderr[-2000:]
    assert metrics(out4)["face_track"]["track"] == "computed" and track_decodes(seen) == 1
    assert len(list(cache.glob("*.json"))) == 2


def test_the_published_track_is_what_lipsync_track_writes(media, tmp_path):
    proc, out = render(tmp_path, "t", media["video"], media["english"], "off")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert metrics(out)["artifacts"]["track"] == str(out / "track.json")
    assert metrics(out)["face_track"]["track"] == "computed" and metrics(out)["face_track"]["cache"] is None
    cli = subprocess.run([sys.executable, "-m", "lipsync.cli", "track", str(media["video"]), "--json",
                          str(tmp_path / "cli.json")], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(RUNNER)})
    assert cli.returncode == 0, cli.stderr
    published, written = json.loads((out / "track.json").read_text()), json.loads((tmp_path / "cli.json").read_text())
    assert published["frames"] == written["frames"] and published["cuts"] == written["cuts"]
    assert published["frames_total"] == 40 and all(f is not None for f in published["frames"])


def test_a_render_reuses_the_track_lipsync_track_made(media, tmp_path):
    """See the track first (`lipsync track`), then render: the render skips its track pass."""
    cache = tmp_path / "tracks"
    cli = subprocess.run([sys.executable, "-m", "lipsync.cli", "track", str(media["video"])], capture_output=True,
                         text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(RUNNER), "LIPSYNC_TRACK_CACHE": str(cache)})
    assert cli.returncode == 0, cli.stderr
    (entry,) = cache.glob("*.json")
    assert f"track computed, kept in {entry}" in cli.stdout
    env, seen = watched_tools(tmp_path)
    proc, out = render(tmp_path, "t", media["video"], media["english"], str(cache), env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert metrics(out)["face_track"]["track"] == "reused" and track_decodes(seen) == 0
    again = subprocess.run([sys.executable, "-m", "lipsync.cli", "track", str(media["video"])], capture_output=True,
                           text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": str(RUNNER), "LIPSYNC_TRACK_CACHE": str(cache)})
    assert again.returncode == 0 and f"track reused from {entry}" in again.stdout, again.stdout + again.stderr


def test_a_damaged_entry_is_recomputed_and_replaced(media, tmp_path):
    cache = tmp_path / "tracks"
    first, out1 = render(tmp_path, "first", media["video"], media["english"], str(cache))
    assert first.returncode == 0, first.stderr[-2000:]
    (entry,) = cache.glob("*.json")
    good = entry.read_text()
    entry.write_text(good[: len(good) // 2])  # a truncated entry (a disk that filled up)
    proc, out2 = render(tmp_path, "second", media["video"], media["english"], str(cache))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert metrics(out2)["face_track"]["track"] == "computed"
    assert "damaged" in (out2 / "run.log").read_text()
    assert json.loads(entry.read_text()) == json.loads(good)  # replaced by a whole one
    assert video_frames_md5(out2 / "output.mp4") == video_frames_md5(out1 / "output.mp4")
    # An entry of the right shape filed under another key is not taken either.
    doc = json.loads(good)
    entry.write_text(json.dumps({**doc, "key": "0" * 64}))
    proc, out3 = render(tmp_path, "third", media["video"], media["english"], str(cache))
    assert proc.returncode == 0 and metrics(out3)["face_track"]["track"] == "computed"


def test_an_unwritable_cache_does_not_fail_the_job(media, tmp_path):
    blocked = tmp_path / "tracks"
    blocked.write_text("a file where the cache folder should be")
    proc, out = render(tmp_path, "t", media["video"], media["english"], str(blocked))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    m = metrics(out)
    assert m["face_track"]["track"] == "computed" and m["face_track"]["cache"] is None  # nothing was kept
    warning = f"LIPSYNC_TRACK_CACHE={str(blocked)!r} is a file, not a folder: give a folder, an s3:// prefix, or 'off'"
    assert warning in (out / "run.log").read_text()


def test_a_video_without_a_face_is_not_cached(media, tmp_path):
    cache = tmp_path / "tracks"
    proc, _ = render(tmp_path, "t", media["noface"], media["english"], str(cache))
    assert proc.returncode != 0 and "NoFaceFound" in proc.stdout + proc.stderr
    assert not list(cache.glob("*.json")) if cache.exists() else True


def test_the_cache_on_s3(media, tmp_path, monkeypatch):
    for _ in s3server.running(tmp_path, monkeypatch):
        prefix = f"s3://{s3server.BUCKET}/tracks/renders"
        first, _ = render(tmp_path, "first", media["video"], media["english"], prefix)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
        names = [o.object_name for o in s3.client_from_env().list_objects(s3server.BUCKET, "tracks/", recursive=True)]
        assert len(names) == 1 and names[0].startswith("tracks/renders/") and names[0].endswith(".json")
        env, seen = watched_tools(tmp_path)
        second, out2 = render(tmp_path, "second", media["video"], media["german"], prefix, env)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-2000:]
        m = metrics(out2)
        assert m["face_track"]["track"] == "reused" and track_decodes(seen) == 0
        assert m["face_track"]["cache"] == f"s3://{s3server.BUCKET}/{names[0]}"


# ---------------------------------------------------------------------------------------- units
def test_a_scan_survives_its_json_exactly(media):
    info = probe_video(media["video"])
    sc = scan_video(media["video"], info, FaceSpec())
    assert sc.detections and sc.landmarks and sc.followed
    back = trackcache.scan_from_json(json.loads(json.dumps(trackcache.scan_to_json(sc))))
    assert back == sc
    with pytest.raises((ValueError, KeyError, TypeError)):
        trackcache.scan_from_json({**trackcache.scan_to_json(sc), "cuts": [5]})


def test_the_key_holds_what_the_scan_depends_on(media):
    info = probe_video(media["video"])
    base = trackcache.key("a" * 64, FaceSpec(), info)
    assert trackcache.key("a" * 64, FaceSpec(padding=0.4), info) == base  # the crop, not the scan
    others = [
        trackcache.key("b" * 64, FaceSpec(), info),
        trackcache.key("a" * 64, FaceSpec(detect_every=3), info),
        trackcache.key("a" * 64, FaceSpec(select="index", index=1), info),
        trackcache.key("a" * 64, FaceSpec(detector="haar-alt2"), info),
        trackcache.key("a" * 64, FaceSpec(detector="yunet", weights="/w/yunet.onnx"), info, "c" * 64),
        trackcache.key("a" * 64, FaceSpec(detector="yunet", weights="/w/yunet.onnx"), info, "d" * 64),
        trackcache.key("a" * 64, FaceSpec(), dataclasses.replace(info, fps=Fraction(30))),
        trackcache.key("a" * 64, FaceSpec(), dataclasses.replace(info, start_time=0.5)),
        trackcache.key("a" * 64, FaceSpec(), dataclasses.replace(info, width=info.width + 2)),
    ]
    assert len({base, *others}) == len(others) + 1
    # The detector weights count by their bytes, not where they were read from.
    assert (trackcache.key("a" * 64, FaceSpec(detector="yunet", weights="/w/yunet.onnx"), info, "c" * 64)
            == trackcache.key("a" * 64, FaceSpec(detector="yunet", weights="s3://models/yunet.onnx"), info, "c" * 64))


def test_an_unreachable_s3_cache_is_given_up_on_once(monkeypatch, tmp_path):
    """A cache store that does not answer costs its own short bound once, not the job's S3 bound
    on every read and write."""
    import time

    port = s3server.free_port()  # nothing listens there: every connection is refused (transient)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("LIPSYNC_S3_RETRY_SECONDS", "600")  # the job's own bound: not what the cache waits
    monkeypatch.setattr(trackcache, "S3_RETRY_SECONDS", 1.0)
    cache = trackcache.TrackCache("s3://tracks/team-a")
    start = time.monotonic()
    assert cache.load("a" * 64) is None and cache.broken
    sc = trackcache.scan_from_json({"frames": 1, "detections": {}, "cuts": [0], "detector_calls": 0,
                                    "landmarks": {}, "followed": {}, "searches": 0})
    assert cache.save("a" * 64, sc, tmp_path) is False
    assert time.monotonic() - start < 30


def test_where_the_cache_lives():
    assert trackcache.location({"LIPSYNC_TRACK_CACHE": "off"}) is None
    for off in ("none", "No", "false", "0", "disabled"):
        assert trackcache.location({"LIPSYNC_TRACK_CACHE": off}) is None, off
    assert trackcache.location({"LIPSYNC_TRACK_CACHE": "OFF", "XDG_CACHE_HOME": "/c"}) is None
    assert trackcache.location({"LIPSYNC_TRACK_CACHE": "s3://b/tracks/team"}) == "s3://b/tracks/team"
    assert trackcache.location({"LIPSYNC_TRACK_CACHE": "/var/cache/t"}) == "/var/cache/t"
    assert trackcache.location({"XDG_CACHE_HOME": "/c"}) == "/c/lipsync/tracks"
    assert trackcache.location({"XDG_CACHE_HOME": "/c", "LIPSYNC_IN_CLUSTER": "1"}) is None  # only what the operator sets
    with pytest.raises(InvalidSpec, match="LIPSYNC_TRACK_CACHE"):
        trackcache.location({"LIPSYNC_TRACK_CACHE": "https://example.com/tracks"})
