"""Structured logging and progress.

Two renderings of the same events: on a terminal, human lines plus a rich progress bar; off a
terminal (pods, CI), one JSON object per line on stdout, which is what the operator tails for
progress. Every line carries the job name and the stage.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LOG = logging.getLogger("lipsync")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        out.update(getattr(record, "fields", {}))
        if record.exc_info and record.levelno >= logging.ERROR:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        extra = " ".join(f"{k}={v}" for k, v in fields.items() if k != "event")
        return f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {record.levelname:<7} {record.getMessage()}" + (
            f"  {extra}" if extra else ""
        )


_LIVE: list[Any] = []  # the rich Progress drawing on the terminal now, if any


class _BarAwareHandler(logging.StreamHandler):
    """Text lines on a terminal, printed above the progress bar while one is drawn."""

    def emit(self, record: logging.LogRecord) -> None:
        if _LIVE:
            _LIVE[-1].console.print(self.format(record), markup=False, highlight=False, soft_wrap=True)
        else:
            super().emit(record)


def setup(fmt: str = "auto", *, level: int = logging.INFO) -> str:
    """Configure the 'lipsync' logger; returns the format chosen ('text' or 'json')."""
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    LOG.handlers.clear()
    LOG.setLevel(level)
    LOG.propagate = False
    console = _BarAwareHandler(sys.stderr) if fmt == "text" else logging.StreamHandler(sys.stdout)
    console.setFormatter(TextFormatter() if fmt == "text" else JsonFormatter())
    console.addFilter(lambda record: getattr(record, "console", True))
    LOG.addHandler(console)
    return fmt


def event(msg: str, level: int = logging.INFO, *, console: bool = True, **fields: Any) -> None:
    """One structured log line. ``console=False`` keeps it out of the console (stdout in a pod,
    where the operator reads progress) and in run.log only: for a model's own chatter."""
    LOG.log(level, msg, extra={"fields": fields, "console": console})


class Progress:
    """Reports overall progress (0-100) across weighted stages.

    Log lines are throttled to one every ``interval`` seconds; a rich bar is drawn on a terminal.
    """

    def __init__(self, job: str, weights: dict[str, float], *, bar: bool, interval: float = 2.0) -> None:
        self.job, self.interval = job, interval
        total = sum(weights.values())
        self._weights = {k: v / total for k, v in weights.items()}
        self._done: dict[str, float] = {k: 0.0 for k in weights}
        self._last_emit = 0.0
        self._last_pct = -1
        self._bar = None
        self._task = None
        if bar:
            from rich.console import Console
            from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

            self._bar = RichProgress(
                TextColumn("[bold]{task.fields[stage]:<8}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                TimeElapsedColumn(), transient=False, console=Console(stderr=True),
            )
            self._task = self._bar.add_task(job, total=100, stage="")
            self._bar.start()
            _LIVE.append(self._bar)

    @property
    def percent(self) -> int:
        return int(100 * sum(self._weights[k] * v for k, v in self._done.items()))

    def update(self, stage: str, fraction: float) -> None:
        self._done[stage] = min(1.0, max(0.0, fraction))
        pct = self.percent
        if self._bar is not None:
            self._bar.update(self._task, completed=pct, stage=stage)
        now = time.monotonic()
        if pct != self._last_pct and (now - self._last_emit >= self.interval or fraction >= 1.0):
            self._last_emit, self._last_pct = now, pct
            # With a bar on the terminal, the lines go to run.log only: the bar already says it.
            event(f"{stage} {pct}%", event="progress", console=self._bar is None, job=self.job, stage=stage,
                  progress=pct)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            _LIVE.remove(self._bar)

