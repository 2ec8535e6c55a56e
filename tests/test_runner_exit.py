"""The runner exits cleanly whatever fails: exit 1 with InternalError for an unexpected exception
anywhere in the render, 143 on SIGTERM, never an interpreter abort, no ffmpeg left behind, and
nothing published."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from .media import RUNNER, clip, job_file, speech

pytestmark = pytest.mark.slow
INJECT = Path(__file__).parent / "tools" / "inject_fault.py"


def leftover_ffmpeg(marker: str) -> list[str]:
    found = []
    for p in psutil.process_iter(["name", "cmdline"]):
        cmd = " ".join(p.info.get("cmdline") or [])
        if "ffmpeg" in (p.info.get("name") or "") and marker in cmd:
            found.append(cmd)
    return found


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("exit-media")
    clip(d / "face.mp4", seconds=3.0)
    speech(d / "speech.wav")
    return d


@pytest.mark.parametrize("where", ["detector", "model", "encoder"])
def test_an_unexpected_exception_exits_1_with_internal_error(media, tmp_path, where):
    job = job_file(tmp_path, video=str(media / "face.mp4"), audio=str(media / "speech.wav"),
                   timing={"follow": "video"}, output={"uri": str(tmp_path / "out"), "preset": "ultrafast"})
    env = {**os.environ, "PYTHONPATH": str(RUNNER), "LIPSYNC_SCRATCH": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(INJECT), where, "run", str(job)], capture_output=True, text=True,
                          env=env, timeout=300)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 1, said[-2000:]
    assert "InternalError" in said and f"injected fault in the {where}" in said
    assert "Fatal Python error" not in said and "could not acquire lock" not in said
    assert not leftover_ffmpeg(str(media))
    assert not (tmp_path / "out" / "output.mp4").exists() and not (tmp_path / "out" / "metrics.json").exists()
    assert not list(tmp_path.glob("lipsync-*"))  # the scratch folder went too


def test_sigterm_stops_the_render_with_143_and_publishes_nothing(media, tmp_path):
    long = clip(tmp_path / "long.mp4", seconds=30.0)
    job = job_file(tmp_path, video=str(long), audio=str(media / "speech.wav"), timing={"follow": "video"},
                   output={"uri": str(tmp_path / "out"), "preset": "ultrafast"})
    env = {**os.environ, "PYTHONPATH": str(RUNNER), "LIPSYNC_SCRATCH": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "lipsync.cli", "run", "--log-format", "json", str(job)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:  # wait until frames are flowing through the render
        lines.append(line)
        if '"stage": "render"' in line:
            break
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    took = time.monotonic() - sent
    assert proc.returncode == 143, "".join(lines) + rest
    assert took < 25, f"SIGTERM (grace period 30 s) took {took:.1f} s to stop the render"
    assert "SIGTERM" in rest and "Traceback" not in rest
    assert not leftover_ffmpeg(str(tmp_path))
    assert not (tmp_path / "out" / "output.mp4").exists() and not (tmp_path / "out" / "metrics.json").exists()
