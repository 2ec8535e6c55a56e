"""The output timeline as pictures: source frame ``source_index(i)`` at output frame ``i``.

When the output is longer than the video (``timing.follow: audio`` with longer speech) the video
plays forward, then backward, then forward again (ping-pong). Backward legs are read in windows,
each decoded forward and handed out reversed, so memory is bounded by the window. Every read
numbers frames on the same grid (``frames.decode_args``), so a window starting at frame k starts
exactly at frame k. Containers with an index (MP4/MOV, Matroska/WebM) seek to each window; others
(MPEG-TS, raw streams) cannot seek exactly and decode each window from the start (slower, still
exact).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from .. import env
from ..errors import InvalidMedia
from ..video.source import source_index
from .frames import PREFETCH, FramePool, Layout, Picture, PlanarReader, decode_args, decoder_threads

SEEKABLE = ("mov", "mp4", "matroska", "webm")  # ffprobe format names whose index makes -ss exact


def window_frames(layout: Layout) -> int:
    """Frames per backward window: LIPSYNC_WINDOW_MB (128) of frames, 8 to 240."""
    budget = env.number("LIPSYNC_WINDOW_MB", 128.0, stage="render") * 1024 * 1024
    return int(max(8, min(240, budget // layout.frame_bytes)))


@dataclass(frozen=True)
class Timeline:
    """The source video as the render reads it: ``n_src`` frames at ``fps`` on the grid that
    starts at ``start_time``, in ``layout``."""

    path: Path
    layout: Layout
    fps: Fraction
    start_time: float
    source_size: tuple[int, int]  # (width, height) before even padding
    n_src: int
    container: str = ""

    @property
    def seekable(self) -> bool:
        return any(name in self.container.split(",") for name in SEEKABLE)

    def reader(self, pool: FramePool, start: int = 0, frames: int | None = None, prefetch: int = PREFETCH) -> PlanarReader:
        argv = decode_args(self.path, self.layout, fps=self.fps, start_time=self.start_time,
                           source_size=self.source_size, start_frame=start, frames=frames, seek=self.seekable,
                           threads=decoder_threads())
        return PlanarReader(argv, pool, prefetch=prefetch)

    def pictures(self, pool: FramePool, n_out: int, first: int = 0) -> Iterator[Picture]:
        """Output frames ``first`` .. ``n_out - 1`` as pictures from ``pool``, in order; the
        consumer owns each one and gives it back with ``pool.put``."""
        if self.n_src == 1:
            yield from self._still(pool, n_out - first)
            return
        i = first
        while i < n_out:
            period = 2 * (self.n_src - 1)
            k = i % period
            if k < self.n_src:  # forward leg from source frame k
                count = min(self.n_src - k, n_out - i)
                got = 0
                for got, pic in enumerate(self._forward(pool, k, count), 1):
                    yield pic
                if got == 0 and k == 0:
                    raise InvalidMedia("spec.video decoded to no frames on the render pass", stage="render")
                i += count
            else:  # backward leg: source frames period - k down to 1
                top = period - k
                count = min(top, n_out - i)
                yield from self._backward(pool, top, top - count)
                i += count

    def _forward(self, pool: FramePool, start: int, count: int) -> Iterator[Picture]:
        got = 0
        with self.reader(pool, start, count) as reader:
            for pic in reader:
                got += 1
                yield pic
        # A decode shorter than the track pass counted (rare): hold the last frame it gave.
        while 0 < got < count:
            yield from self._copies(pool, start + got - 1, 1)
            got += 1

    def _copies(self, pool: FramePool, index: int, times: int) -> Iterator[Picture]:
        """``times`` copies of source frame ``index``."""
        own = FramePool(self.layout, 2)
        with self.reader(own, index, 1, prefetch=1) as reader:
            frame = next(iter(reader), None)
            if frame is None:
                raise InvalidMedia(f"spec.video: frame {index} did not decode on the render pass", stage="render")
            for _ in range(times):
                pic = pool.get()
                assert pic is not None
                yield pic.copy_from(frame)

    def picture(self, index: int) -> Picture:
        """Source frame ``index`` alone (a seek and one decoded frame; for previews)."""
        pool = FramePool(self.layout, 1)
        return next(iter(self._copies(pool, index, 1)))

    def _still(self, pool: FramePool, n_out: int) -> Iterator[Picture]:
        yield from self._copies(pool, 0, n_out)

    def _backward(self, pool: FramePool, top: int, bottom: int) -> Iterator[Picture]:
        """Source frames ``top`` down to ``bottom + 1``, window by window."""
        size = window_frames(self.layout)
        own = FramePool(self.layout, size + 2)
        end = top + 1
        while end > bottom + 1:
            start = max(bottom + 1, end - size)
            with self.reader(own, start, end - start, prefetch=2) as reader:
                window: list[Picture] = []
                for pic in reader:
                    window.append(pic)
                    if len(window) == end - start:
                        break
            if not window:
                raise InvalidMedia(f"spec.video: frames {start}-{end - 1} did not decode on the render pass",
                                   stage="render")
            while len(window) < end - start:  # short decode: hold its last frame
                spare = own.get()
                assert spare is not None
                window.append(spare.copy_from(window[-1]))
            for pic in reversed(window):
                out = pool.get()
                assert out is not None
                yield out.copy_from(pic)
                own.put(pic)
            end = start


def order(n_out: int, n_src: int) -> list[int]:
    """The source frame at each output frame."""
    return [source_index(i, n_src) for i in range(n_out)]
