"""Encode: raw frames into ffmpeg through a pipe; the video is encoded once, here.

Odd picture sizes are padded by one replicated row/column (4:2:0 video needs even sizes). A
writer thread drains a small queue so that encoding overlaps with the model.
"""

from __future__ import annotations

import contextlib
import queue
import subprocess
import tempfile
import threading
from fractions import Fraction
from pathlib import Path

import ffmpeg
import numpy as np

from ..errors import EncodeFailed
from .decode import tail

_END = object()


def even(n: int) -> int:
    return n + (n % 2)


def encode_command(dest: Path, width: int, height: int, fps: Fraction, *, codec: str, crf: int, preset: str,
                   pix_fmt: str = "yuv420p") -> list[str]:
    """``pix_fmt`` yuv420p for delivery; yuv444p (with crf 0: lossless) for clips a model reads back."""
    src = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="bgr24", s=f"{even(width)}x{even(height)}", r=str(fps))
    kw = {"vcodec": codec, "crf": crf, "preset": preset, "pix_fmt": pix_fmt, "r": str(fps), "loglevel": "error"}
    if codec == "libx265":
        kw["tag:v"] = "hvc1"  # plays in QuickTime/Safari
    return ffmpeg.output(src, str(dest), **kw).overwrite_output().compile()


class FrameWriter:
    def __init__(self, argv: list[str], width: int, height: int, *, depth: int = 8) -> None:
        self.width, self.height = width, height
        self._pad = (even(height) - height, even(width) - width)
        self._errors = tempfile.TemporaryFile()  # a file, not a pipe nobody drains while frames flow
        try:
            self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stderr=self._errors)
        except OSError:
            self._errors.close()
            raise
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()
        self.frames = 0

    def _drain(self) -> None:
        assert self._proc.stdin is not None
        while (frame := self._queue.get()) is not _END:
            if self._error is None:
                try:
                    self._proc.stdin.write(frame.tobytes())
                except (BrokenPipeError, OSError) as e:
                    self._error = e

    def write(self, frame: np.ndarray) -> None:
        if self._error is not None:  # ffmpeg is gone: stop now, not after the model ran the whole clip
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            raise EncodeFailed(f"ffmpeg stopped taking frames: {self._why()}", stage="encode")
        if frame.shape != (self.height, self.width, 3):
            raise ValueError(f"frame of shape {frame.shape}, expected {(self.height, self.width, 3)}")
        if any(self._pad):
            frame = np.pad(frame, ((0, self._pad[0]), (0, self._pad[1]), (0, 0)), mode="edge")
        self._queue.put(np.ascontiguousarray(frame))
        self.frames += 1

    def close(self) -> None:
        self._queue.put(_END)
        self._thread.join()
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        code = self._proc.wait()
        why = self._why()
        self._errors.close()
        if code != 0 or self._error is not None:
            raise EncodeFailed(f"ffmpeg could not encode the output: {why}", stage="encode")

    def _why(self) -> str:
        """ffmpeg's last error line, else the pipe error, else its exit status."""
        err = tail(self._errors)
        if err:
            return err.splitlines()[-1]
        return str(self._error) if self._error is not None else f"ffmpeg exit {self._proc.poll()}"

    def abort(self) -> None:
        self._proc.kill()
        self._queue.put(_END)
        self._thread.join()
        assert self._proc.stdin is not None
        with contextlib.suppress(OSError):
            self._proc.stdin.close()
        self._proc.wait()
        self._errors.close()

    def __enter__(self) -> "FrameWriter":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        """Finish the file on success; on any error kill ffmpeg, so no half-file looks finished."""
        if exc_type is None:
            self.close()
        else:
            self.abort()
