"""The output timeline: which source frame stands at each output frame.

When the output is longer than the video (``timing.follow: audio`` with longer speech), the
video plays forward, then backward, then forward again (ping-pong), so there is no jump cut.
Backward legs are read in short windows, each reversed in memory: memory stays bounded by the
window, never by the clip.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..errors import InvalidMedia
from .decode import FrameReader, decode_command

WINDOW = 16


def source_index(i: int, n_src: int) -> int:
    """Ping-pong: 0, 1, …, n-1, n-2, …, 1, 0, 1, …"""
    if n_src <= 1:
        return 0
    k = i % (2 * (n_src - 1))
    return k if k < n_src else 2 * (n_src - 1) - k


@dataclass(frozen=True)
class Source:
    path: Path
    width: int
    height: int
    fps: Fraction
    n_src: int

    def _reader(self, start: int = 0, frames: int | None = None) -> FrameReader:
        argv = decode_command(self.path, fps=self.fps, start_frame=start, frames=frames)
        return FrameReader(argv, self.width, self.height)

    def frames(self, n_out: int) -> Iterator[np.ndarray]:
        """Yields exactly ``n_out`` frames in output order."""
        if self.n_src == 1:  # a still: decode once, show it throughout
            with self._reader() as reader:
                first = next(iter(reader), None)
            if first is None:
                raise InvalidMedia("spec.video decoded to no frames on the render pass", stage="render")
            for _ in range(n_out):
                yield first
            return
        produced = 0
        forward = True
        while produced < n_out:
            before = produced
            leg = self._forward() if forward else self._backward()
            for frame in leg:
                if produced == n_out:
                    leg.close()
                    break
                yield frame
                produced += 1
            if forward and produced == before:  # never loop on a video that stopped decoding
                raise InvalidMedia("spec.video decoded to no frames on the render pass", stage="render")
            forward = not forward

    def _forward(self) -> Iterator[np.ndarray]:
        with self._reader() as reader:
            last = None
            count = 0
            for frame in reader:
                last = frame
                count += 1
                yield frame
                if count == self.n_src:
                    return
            # A decode shorter than the scan said (rare, seek-free): hold the last frame.
            while last is not None and count < self.n_src:
                count += 1
                yield last

    def _backward(self) -> Iterator[np.ndarray]:
        """Frames n-2 down to 1."""
        end = self.n_src - 1
        while end > 1:
            start = max(1, end - WINDOW)
            with self._reader(start, end - start) as reader:
                window = list(reader)
            if not window:
                return
            while len(window) < end - start:
                window.append(window[-1])
            yield from reversed(window)
            end = start
