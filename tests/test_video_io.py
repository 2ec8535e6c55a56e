"""The ffmpeg pipes: no deadlock on chatty stderr, a dead encoder stops the render at once,
a window of a clip can be read on its own."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from lipsync.errors import EncodeFailed, InvalidMedia
from lipsync.video.decode import FrameReader
from lipsync.video.encode import FrameWriter


def test_reader_survives_a_flood_on_stderr():
    # 200 kB of errors before the frames: more than a pipe holds.
    child = "import sys; sys.stderr.write('x' * 200000); sys.stdout.buffer.write(bytes(2 * 2 * 3 * 4))"
    t0 = time.monotonic()
    with FrameReader([sys.executable, "-c", child], 2, 2) as reader:
        assert len(list(reader)) == 4
    assert time.monotonic() - t0 < 10


def test_reader_reports_a_failed_decode_with_its_last_error_line():
    child = "import sys; sys.stderr.write('noise\\n' * 5000 + 'moov atom not found\\n'); sys.exit(1)"
    with FrameReader([sys.executable, "-c", child], 2, 2) as reader, pytest.raises(InvalidMedia, match="moov atom"):
        list(reader)


def test_writer_stops_at_once_when_the_encoder_dies():
    child = "import sys; sys.stdin.buffer.read(10); sys.stderr.write('x' * 200000); sys.exit(3)"
    frame = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(EncodeFailed):
        with FrameWriter([sys.executable, "-c", child], 64, 64) as writer:
            for _ in range(10_000):  # far more than a pipe buffers: must fail long before the end
                writer.write(frame)
    assert writer.frames < 10_000


def test_writer_names_ffmpegs_own_error(tmp_path):
    from lipsync.video.encode import encode_command

    argv = encode_command(tmp_path / "no" / "such" / "dir" / "x.mp4", 64, 64, 25, codec="libx264", crf=23,
                          preset="ultrafast")
    frame = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(EncodeFailed, match="No such file or directory"):
        with FrameWriter(argv, 64, 64) as writer:
            for _ in range(500):
                writer.write(frame)
