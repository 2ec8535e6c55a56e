"""Decode: frames out of ffmpeg through a pipe, one at a time, never the whole clip.

ffmpeg applies the file's rotation itself, and an ``fps`` filter turns variable frame rate into
the constant rate the pipeline plans with (for constant-rate input it passes frames 1:1; always
applying it also covers containers that do not report a variable rate, such as Matroska). A reader thread keeps a few frames ready so that
decoding overlaps with the work done on each frame.
"""

from __future__ import annotations

import queue
import subprocess
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import ffmpeg
import numpy as np

from ..errors import InvalidMedia

_END = object()


def decode_command(path: Path, *, fps: Fraction, size: tuple[int, int] | None = None,
                   start_frame: int = 0, frames: int | None = None, rate: Fraction | None = None) -> list[str]:
    """The ffmpeg argv that writes raw BGR frames to stdout.

    ``fps`` is the constant output rate; ``size`` scales (analysis pass);
    ``start_frame``/``frames`` read a window, seeking to it (``rate`` converts frames to time).
    """
    in_kw: dict = {}
    if start_frame:
        assert rate is not None
        in_kw["ss"] = f"{max(0.0, (start_frame - 0.5) / float(rate)):.6f}"
    stream = ffmpeg.input(str(path), **in_kw).video
    stream = stream.filter("fps", fps=str(fps))
    if size is not None:
        stream = stream.filter("scale", size[0], size[1], flags="area")
    out_kw: dict = {"format": "rawvideo", "pix_fmt": "bgr24", "loglevel": "error", "nostdin": None}
    if frames is not None:
        out_kw["frames:v"] = frames
    return ffmpeg.output(stream, "pipe:", **out_kw).compile()


class FrameReader:
    """Iterates (H, W, 3) uint8 BGR frames from ffmpeg; raises InvalidMedia on a decode error."""

    def __init__(self, argv: list[str], width: int, height: int, *, field: str = "spec.video", prefetch: int = 8) -> None:
        self.width, self.height, self.field = width, height, field
        self._frame_bytes = width * height * 3
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=self._frame_bytes)
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stderr = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self._proc.stdout is not None
        try:
            while not self._stop.is_set():
                buf = self._proc.stdout.read(self._frame_bytes)
                if len(buf) < self._frame_bytes:
                    break
                self._queue.put(np.frombuffer(buf, np.uint8).reshape(self.height, self.width, 3))
        finally:
            self._queue.put(_END)

    def __iter__(self) -> Iterator[np.ndarray]:
        while (item := self._queue.get()) is not _END:
            yield item
        self._finish()

    def _finish(self) -> None:
        assert self._proc.stderr is not None
        self._stderr = self._proc.stderr.read()
        code = self._proc.wait()
        if code != 0 and not self._stop.is_set():
            lines = self._stderr.decode(errors="replace").strip().splitlines()
            detail = lines[-1] if lines else f"ffmpeg exit {code}"
            raise InvalidMedia(f"{self.field}: decoding failed ({detail}): the file may be corrupt or truncated", stage="decode")

    def close(self) -> None:
        self._stop.set()
        if self._proc.poll() is None:
            self._proc.kill()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
        self._proc.wait()

    def __enter__(self) -> "FrameReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
