"""The CPU budget (lipsync.cpus): a pod given fewer cores than its node shows sizes every thread
pool and worker count to what it was given (LIPSYNC_CPUS from its request, or a cgroup quota)."""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from lipsync import cpus
from lipsync.chunks.render import default_workers
from lipsync.io.probe import Colour
from lipsync.render.engine import encoder_threads
from lipsync.render.frames import decoder_threads, encode_args, layout_for

from .media import RUNNER, clip, job_file, speech
from .test_track_cache import watched_tools

several = pytest.mark.skipif(cpus.visible() < 2, reason="needs a machine with 2 cores or more")


def cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    """A cgroup filesystem's root with these files (relative path: contents)."""
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return tmp_path


@pytest.mark.parametrize("text, cores", [("max 100000", None), ("250000 100000", 3), ("100000 100000", 1),
                                         ("50000 100000", 1), ("800000 200000", 4), ("nonsense", None)])
def test_a_cgroup_v2_quota_in_whole_cores(tmp_path, text, cores):
    assert cpus.cgroup_quota(cgroup(tmp_path, {"cpu.max": text})) == cores


@pytest.mark.parametrize("quota, period, cores", [("-1", "100000", None), ("300000", "100000", 3), ("150000", "100000", 2)])
def test_a_cgroup_v1_quota_in_whole_cores(tmp_path, quota, period, cores):
    root = cgroup(tmp_path, {"cpu/cpu.cfs_quota_us": quota, "cpu/cpu.cfs_period_us": period})
    assert cpus.cgroup_quota(root) == cores


def test_no_cgroup_files_is_no_quota(tmp_path):
    assert cpus.cgroup_quota(tmp_path) is None


def test_the_budget_is_the_smallest_limit(tmp_path, monkeypatch):
    monkeypatch.delenv(cpus.CPUS_ENV, raising=False)
    assert cpus.budget(tmp_path) == cpus.visible()  # nothing says less: every core in view
    monkeypatch.setenv(cpus.CPUS_ENV, str(cpus.visible() + 50))
    assert cpus.budget(tmp_path) == cpus.visible()  # a request bigger than the machine: the machine
    monkeypatch.setenv(cpus.CPUS_ENV, "1")
    assert cpus.budget(tmp_path) == 1
    monkeypatch.delenv(cpus.CPUS_ENV)
    assert cpus.budget(cgroup(tmp_path, {"cpu.max": "100000 100000"})) == 1


@several
def test_a_smaller_budget_sizes_the_encoder_decoder_and_workers(monkeypatch):
    for name in ("LIPSYNC_ENCODER_THREADS", "LIPSYNC_DECODER_THREADS", "LIPSYNC_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(cpus.CPUS_ENV, raising=False)
    if not cpus.constrained():  # the whole machine: x264 picks its threads from the cores, as it always did
        assert encoder_threads() is None
    monkeypatch.setenv(cpus.CPUS_ENV, "1")
    assert cpus.constrained()
    assert encoder_threads() == 1 and decoder_threads() == 1 and default_workers(10) == 1
    lay = layout_for("yuv420p", 8, 640, 360)
    x265 = encode_args(Path("o.mp4"), lay, Fraction(25), Colour(), codec="libx265", crf=28, preset="fast", threads=3)
    assert "log-level=error:pools=3" in x265  # x265 sizes its own pool: -threads does not reach it


@several
@pytest.mark.slow
def test_a_render_given_one_core_runs_every_ffmpeg_on_one_thread(tmp_path):
    video, audio = clip(tmp_path / "v.mp4", seconds=1.0), speech(tmp_path / "a.wav", text="Hi.")
    env, seen = watched_tools(tmp_path)
    job = job_file(tmp_path, name="one-core", video=str(video), audio=str(audio), timing={"follow": "video"},
                   output={"uri": str(tmp_path / "out"), "preset": "ultrafast"})
    proc = subprocess.run([sys.executable, "-m", "lipsync.cli", "run", "--log-format", "json", str(job)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env, "PYTHONPATH": str(RUNNER), cpus.CPUS_ENV: "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    calls = seen.read_text().splitlines()
    track = [c for c in calls if "gray" in c]
    encode = [c for c in calls if "libx264" in c]
    decode = [c for c in calls if "-f rawvideo -pix_fmt yuv420p pipe:" in c]
    assert track and encode and decode
    assert all(" -threads 1 " in c for c in track + encode + decode), calls


def test_the_libraries_are_sized_to_the_budget_before_any_work():
    code = ("from lipsync import cpus; cpus.apply_to_libraries(); import cv2, os; "
            "print(cv2.getNumThreads(), os.environ.get('OMP_NUM_THREADS'))")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**env, "PYTHONPATH": str(RUNNER), cpus.CPUS_ENV: "1"}).stdout.split()
    if cpus.visible() > 1:
        assert out == ["1", "1"]
    bad = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**env, "PYTHONPATH": str(RUNNER), cpus.CPUS_ENV: "two"})
    assert bad.returncode == 0  # left to the stage that reads it, which names it (test_env)


@pytest.mark.parametrize("files, limit", [({"memory.max": "max"}, None), ({"memory.max": str(4 << 30)}, 4 << 30),
                                          ({"memory/memory.limit_in_bytes": str(2 << 30)}, 2 << 30),
                                          ({"memory/memory.limit_in_bytes": "9223372036854771712"}, None), ({}, None)])
def test_the_memory_limit(tmp_path, files, limit):
    assert cpus.memory_limit(cgroup(tmp_path, files)) == limit


def test_auto_workers_fit_the_memory_limit(tmp_path, monkeypatch):
    from lipsync.chunks.render import worker_bytes

    monkeypatch.delenv("LIPSYNC_WORKERS", raising=False)
    per = worker_bytes(1920 * 1080 * 3 // 2, torch_model=True)
    assert 1.7 * (1 << 30) < per < 1.9 * (1 << 30)  # a 1080p Wav2Lip worker: about 1.8 GiB (a whole render: 1.7)
    assert default_workers(100, per, tmp_path, cores=32) == 8  # no memory limit: one per 4 cores
    eight = cgroup(tmp_path / "8g", {"memory.max": str(8 << 30)})
    assert default_workers(100, per, eight, cores=32) == 3  # what 80 % of 8 GiB holds
    assert default_workers(100, worker_bytes(1920 * 1080 * 3 // 2, torch_model=False), eight, cores=32) == 7  # ~0.85 GiB each
    tight = cgroup(tmp_path / "1g", {"memory.max": str(1 << 30)})
    assert default_workers(100, per, tight, cores=32) == 1  # never none
    assert default_workers(3, None, tight, cores=32) == 3  # no estimate: the cores decide, up to the chunks
