"""Prometheus metrics on ``LIPSYNC_METRICS_PORT`` (0 turns the endpoint off).

``prometheus_client`` (the reference client; without it the operator runs, with a warning and
no endpoint) renders the text format and serves it from a thread; counts that the operator already knows (LipSyncJobs by phase, queue length, GPU Jobs,
API calls) are read at scrape time by a collector, so they cannot drift from the state.

* ``lipsync_jobs{phase}``                       LipSyncJobs this operator knows, by phase
* ``lipsync_queue_length``                      LipSyncJobs Queued for a GPU
* ``lipsync_gpu_jobs_running``                  GPU pods counting against the budget
* ``lipsync_gpu_budget``                        the budget (``LIPSYNC_GPU_BUDGET``)
* ``lipsync_api_calls_total{group,resource,verb}`` the operator's own API calls (kopf's aside)
* ``lipsync_job_duration_seconds{phase}``       startedAt → finishedAt of finished renders
* ``lipsync_job_wait_seconds``                  creationTimestamp → Job created
* ``lipsync_transitions_total{phase}``          status phase transitions written
"""

from __future__ import annotations

import datetime
import logging
from typing import TYPE_CHECKING, Any, Iterator

try:  # the operator runs without it (no endpoint, a warning) until it is a declared dependency
    from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError:  # pragma: no cover - exercised only where prometheus_client is absent
    CollectorRegistry = None  # type: ignore[assignment,misc]
    Collector = object  # type: ignore[assignment,misc]

if TYPE_CHECKING:
    from .controller import Controller

PHASES = ("Pending", "Queued", "Running", "Succeeded", "Failed")
_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 21600, float("inf"))


def seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    try:
        a = datetime.datetime.fromisoformat(start.replace("Z", "+00:00"))
        b = datetime.datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0.0, (b - a).total_seconds())


class _StateCollector(Collector):
    def __init__(self, ctl: "Controller") -> None:
        self.ctl = ctl

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        snap = self.ctl.snapshot()
        jobs = GaugeMetricFamily("lipsync_jobs", "LipSyncJobs known to the operator, by phase", labels=["phase"])
        for phase in PHASES:
            jobs.add_metric([phase], snap["phases"].get(phase, 0))
        yield jobs
        yield GaugeMetricFamily("lipsync_queue_length", "LipSyncJobs waiting for a GPU", value=snap["queued"])
        yield GaugeMetricFamily("lipsync_gpu_jobs_running", "GPU pods counting against the budget",
                                value=snap["gpu_running"])
        yield GaugeMetricFamily("lipsync_gpu_budget", "GPU Jobs allowed at once", value=snap["budget"])
        calls = CounterMetricFamily("lipsync_api_calls", "The operator's own API calls",
                                    labels=["group", "resource", "verb"])
        for (group, resource, verb), n in sorted(snap["calls"].items()):
            calls.add_metric([group or "core", resource, verb], n)
        yield calls


class _Nothing:
    def labels(self, *_: Any) -> "_Nothing":
        return self

    def observe(self, *_: Any) -> None:
        pass

    def inc(self, *_: Any) -> None:
        pass


class Metrics:
    """One registry per operator run (tests start several operators in one process)."""

    def __init__(self, ctl: "Controller") -> None:
        self._server = None
        if CollectorRegistry is None:
            self.registry = None
            self.duration = self.wait = self.transitions = _Nothing()
            return
        self.registry = CollectorRegistry()
        self.registry.register(_StateCollector(ctl))
        self.duration = Histogram("lipsync_job_duration_seconds", "Render time, startedAt to finishedAt",
                                  ["phase"], buckets=_BUCKETS, registry=self.registry)
        self.wait = Histogram("lipsync_job_wait_seconds", "Time from creation to Job creation",
                              buckets=_BUCKETS, registry=self.registry)
        self.transitions = Counter("lipsync_transitions", "Status phase transitions written", ["phase"],
                                   registry=self.registry)

    def serve(self, port: int) -> None:
        if port and self.registry is None:
            logging.getLogger("lipsync_operator").warning(
                "LIPSYNC_METRICS_PORT=%s but prometheus_client is not installed: no metrics endpoint", port)
        elif port:
            self._server, _ = start_http_server(port, registry=self.registry)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def transition(self, old: dict, new: dict) -> None:
        phase = new.get("phase")
        if not phase or phase == old.get("phase"):
            return
        self.transitions.labels(phase).inc()
        if phase in ("Succeeded", "Failed"):
            took = seconds_between(new.get("startedAt"), new.get("finishedAt"))
            if took is not None:
                self.duration.labels(phase).observe(took)
