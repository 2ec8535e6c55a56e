"""Every number the runner reads from its environment is checked the same way (lipsync.env)."""

from __future__ import annotations

import pytest

from lipsync import cpus, env
from lipsync.chunks.render import default_workers
from lipsync.errors import InvalidSpec
from lipsync.io import limits, s3
from lipsync.render.engine import encoder_threads, frames_in_flight
from lipsync.render.frames import layout_for, decode_args, decoder_threads
from lipsync.render.timeline import window_frames

LAYOUT = layout_for("yuv420p", 8, 1920, 1080)

READERS = {  # variable -> a call that reads it
    "LIPSYNC_FRAME_BUFFER_MB": lambda: frames_in_flight(LAYOUT.frame_bytes, 16),
    "LIPSYNC_WINDOW_MB": lambda: window_frames(LAYOUT),
    "LIPSYNC_ENCODER_THREADS": encoder_threads,
    "LIPSYNC_DECODER_THREADS": decoder_threads,
    "LIPSYNC_WORKERS": lambda: default_workers(8),
    cpus.CPUS_ENV: cpus.budget,
    "LIPSYNC_MAX_INPUT_BYTES": limits.max_input_bytes,
    "LIPSYNC_MAX_WEIGHTS_BYTES": limits.max_weights_bytes,
    "LIPSYNC_DOWNLOAD_DEADLINE_SECONDS": lambda: limits.Deadline().seconds,
    s3.RETRY_SECONDS_ENV: s3.retry_seconds,
    s3.PART_SIZE_ENV: s3.part_size,
}


@pytest.mark.parametrize("name", sorted(READERS))
@pytest.mark.parametrize("bad", ["abc", "-3", "1e999x"])
def test_a_value_that_is_not_a_usable_number_names_the_variable(monkeypatch, name, bad):
    monkeypatch.setenv(name, bad)
    with pytest.raises(InvalidSpec, match=name):
        READERS[name]()


def test_values_are_used_and_defaults_apply(monkeypatch):
    for name in READERS:
        monkeypatch.delenv(name, raising=False)
    assert decoder_threads() == max(1, min(4, cpus.budget() // 4))
    assert encoder_threads() is None
    assert frames_in_flight(LAYOUT.frame_bytes, 16) == 32  # two batches fit in 256 MB at 1080p
    monkeypatch.setenv("LIPSYNC_DECODER_THREADS", "3")
    monkeypatch.setenv("LIPSYNC_ENCODER_THREADS", "5")
    monkeypatch.setenv("LIPSYNC_FRAME_BUFFER_MB", "16")  # 5 frames of 3.1 MB
    monkeypatch.setenv("LIPSYNC_WORKERS", "3")
    assert decoder_threads() == 3 and encoder_threads() == 5 and default_workers(8) == 3 and default_workers(2) == 2
    assert frames_in_flight(LAYOUT.frame_bytes, 16) == 5
    argv = decode_args("in.mp4", LAYOUT, fps=25, start_time=0.0, source_size=(1920, 1080), threads=decoder_threads())
    assert argv[argv.index("-threads") + 1] == "3" and argv.index("-threads") < argv.index("-i")
    monkeypatch.setenv(s3.PART_SIZE_ENV, str(4 * 1024 * 1024))  # below S3's 5 MiB minimum part
    with pytest.raises(InvalidSpec, match="must be >= 5242880"):
        s3.part_size()


def test_number_bounds():
    import os

    os.environ.pop("LIPSYNC_TEST_N", None)
    assert env.number("LIPSYNC_TEST_N", 7, int) == 7
    os.environ["LIPSYNC_TEST_N"] = "0"
    try:
        assert env.number("LIPSYNC_TEST_N", 7, int, inclusive=True) == 0
        with pytest.raises(InvalidSpec, match="must be > 0"):
            env.number("LIPSYNC_TEST_N", 7, int)
    finally:
        os.environ.pop("LIPSYNC_TEST_N")
