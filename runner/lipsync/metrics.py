"""Per-stage figures: wall seconds, frames, fps and peak memory, gathered into metrics.json."""

from __future__ import annotations

import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator


def peak_rss_mb() -> float:
    """Peak resident memory of this Python process so far.

    ffmpeg's own memory is not reported: the kernel's figure for children counts the pages a
    child shares with this process between fork and exec, so it only ever echoes this one."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


@dataclass
class StageFigures:
    wall_s: float = 0.0
    frames: int = 0
    peak_rss_mb: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        fps = round(self.frames / self.wall_s, 2) if self.wall_s > 0 and self.frames else None
        return {"wall_s": round(self.wall_s, 3), "frames": self.frames, "fps": fps, "peak_rss_mb": self.peak_rss_mb}


@dataclass
class Metrics:
    stages: dict[str, StageFigures] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[StageFigures]:
        fig = self.stages.setdefault(name, StageFigures())
        t0 = time.perf_counter()
        try:
            yield fig
        finally:
            fig.wall_s += time.perf_counter() - t0
            fig.peak_rss_mb = peak_rss_mb()

    def as_dict(self) -> dict[str, Any]:
        return {
            "stages": {k: v.as_dict() for k, v in self.stages.items()},
            "peak_rss_mb": peak_rss_mb(),
            **self.extra,
        }
