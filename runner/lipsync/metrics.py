"""Per-stage figures: wall seconds, frames, fps and peak memory, gathered into metrics.json.

Memory is the whole process tree's (this process plus its ffmpeg and model children), sampled
every 50 ms: that is what a pod's memory limit sees. The kernel's own peak figure for children
cannot be used: it counts the pages a child shares with this process between fork and exec.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import psutil

SAMPLE_S = 0.05


def tree_rss_bytes(proc: psutil.Process | None = None) -> int:
    """Resident memory of ``proc`` (default: this process) and all its descendants, in bytes."""
    proc = proc or psutil.Process()
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


class TreeMemory:
    """A sampler thread keeping the peak of ``tree_rss_bytes``: overall and since ``mark``."""

    def __init__(self, interval: float = SAMPLE_S) -> None:
        self.interval = interval
        self.peak = 0
        self.since_mark = 0
        self._stop = threading.Event()
        self._proc = psutil.Process()
        self._thread: threading.Thread | None = None

    def sample(self) -> int:
        now = tree_rss_bytes(self._proc)
        self.peak = max(self.peak, now)
        self.since_mark = max(self.since_mark, now)
        return now

    def mark(self) -> None:
        self.since_mark = 0
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> "TreeMemory":
        self.sample()
        self._thread = threading.Thread(target=self._run, name="memory", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()


def _mb(n: int) -> float:
    return round(n / (1024 * 1024), 1)


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
    """Stage figures; ``peak_rss_mb`` everywhere is the whole process tree's (see module doc)."""

    stages: dict[str, StageFigures] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    memory: TreeMemory = field(default_factory=TreeMemory)

    @contextmanager
    def stage(self, name: str) -> Iterator[StageFigures]:
        fig = self.stages.setdefault(name, StageFigures())
        self.memory.mark()
        t0 = time.perf_counter()
        try:
            yield fig
        finally:
            fig.wall_s += time.perf_counter() - t0
            self.memory.sample()
            fig.peak_rss_mb = max(fig.peak_rss_mb, _mb(self.memory.since_mark))

    def as_dict(self) -> dict[str, Any]:
        return {
            "stages": {k: v.as_dict() for k, v in self.stages.items()},
            "peak_rss_mb": _mb(self.memory.peak),
            **self.extra,
        }
