"""metrics.py: the Prometheus endpoint renders the controller's state."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from lipsync_operator.metrics import Metrics, seconds_between

pytest.importorskip("prometheus_client")


class FakeController:
    def snapshot(self):
        return {"phases": {"Running": 2, "Queued": 3}, "queued": 3, "gpu_running": 2, "budget": 2,
                "calls": {("batch", "jobs", "create"): 5, ("", "pods", "list"): 7}}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_endpoint_serves_state_and_histograms():
    m = Metrics(FakeController())
    m.transition({"phase": "Running"}, {"phase": "Succeeded", "startedAt": "2026-01-01T00:00:00Z",
                                        "finishedAt": "2026-01-01T00:01:30Z"})
    port = free_port()
    m.serve(port)
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        m.stop()
    assert 'lipsync_jobs{phase="Running"} 2.0' in text
    assert 'lipsync_jobs{phase="Failed"} 0.0' in text
    assert "lipsync_queue_length 3.0" in text
    assert "lipsync_gpu_jobs_running 2.0" in text
    assert 'lipsync_api_calls_total{group="batch",resource="jobs",verb="create"} 5.0' in text
    assert 'lipsync_job_duration_seconds_sum{phase="Succeeded"} 90.0' in text
    assert 'lipsync_transitions_total{phase="Succeeded"} 1.0' in text


def test_port_zero_serves_nothing_and_bad_times_are_skipped():
    m = Metrics(FakeController())
    m.serve(0)
    m.stop()
    assert seconds_between(None, "2026-01-01T00:00:00Z") is None
    assert seconds_between("garbage", "2026-01-01T00:00:00Z") is None
