"""Fixtures: an emulated API server (kmock) and the operator running against it (KopfRunner).

``cluster`` is one kmock server per test; ``operator`` starts ``kopf run`` exactly as
``lipsync-operator`` does (the same arguments, minus the liveness port) in a background thread.
The test plays the Job controller and kubelet by writing Job status and pods through the API.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[2]))  # the repository root: tests.k8s_helpers, tests.s3server

from kubesim import OBSERVED, Cluster, namespace_of, rbac_of  # noqa: E402

from lipsync_operator.permissions import LEASE_RULES, RULES, allows  # noqa: E402

OPERATOR_ENV = {
    "LIPSYNC_RUNNER_IMAGE": "registry.example/lipsync:test",
    "LIPSYNC_GPU_BUDGET": "2",
    "LIPSYNC_PROGRESS_INTERVAL": "0.2",
    "LIPSYNC_METRICS_PORT": "0",
    "LIPSYNC_S3_SECRET": "s3-credentials",
    "LIPSYNC_JOB_NAMESPACES": "renders",  # kubesim.NS: as the chart runs it, namespaced
}


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    c = Cluster()
    monkeypatch.setenv("KUBECONFIG", str(c.kubeconfig(tmp_path / "kubeconfig")))
    for k in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(k, raising=False)
    for k, v in OPERATOR_ENV.items():
        monkeypatch.setenv(k, v)
    try:
        yield c
        # Every request the operator (kopf included) made must be allowed by the declared RBAC.
        made = [(m, p, need) for m, p, q in c.requests() if (need := rbac_of(m, p, q)) is not None]
        OBSERVED.update(need for _, _, need in made)
        # The leader-election Lease lives in the operator's own namespace, under a Role of its own.
        lease_ns = os.environ.get("LIPSYNC_LEASE_NAMESPACE")
        in_lease_ns = [(m, p, need) for m, p, need in made if lease_ns and namespace_of(p) == lease_ns]
        denied = sorted({(m, p, need) for m, p, need in in_lease_ns if not allows(*need, LEASE_RULES)})
        assert not denied, f"requests in the Lease namespace not covered by permissions.LEASE_RULES: {denied}"
        made = [r for r in made if r not in in_lease_ns]
        denied = sorted({(m, p, need) for m, p, need in made if not allows(*need, RULES)})
        assert not denied, f"requests not covered by permissions.RULES: {denied}"
        # ... and granted by a Role in a job namespace: no cluster-wide request, none elsewhere.
        managed = set(filter(None, os.environ.get("LIPSYNC_JOB_NAMESPACES", "").split(",")))
        if managed:
            outside = sorted({(m, p) for m, p, _ in made if namespace_of(p) not in managed})
            assert not outside, f"requests outside the job namespaces {sorted(managed)}: {outside}"
    finally:
        c.close()


def lipsyncjob_watches(cluster: Cluster) -> list[str]:
    return [p for m, p, q in cluster.requests()
            if m == "GET" and p.endswith("/lipsyncjobs") and q.get("watch") in ("true", "1")]


@pytest.fixture
def run_operator(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """A context manager: the operator running (as ``lipsync-operator`` would) while inside."""
    from kopf.testing import KopfRunner

    from lipsync_operator.main import kopf_args

    @contextlib.contextmanager
    def run(**env: str) -> Iterator[KopfRunner]:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        args = [a for a in kopf_args(["--verbose"]) if not a.startswith("--liveness")]
        runner = KopfRunner(args, timeout=30)
        watching = len(lipsyncjob_watches(cluster))
        try:
            with runner:
                # Inside, the operator watches LipSyncJobs: what a test creates next reaches it as
                # watch events in creation order (FIFO within one second relies on that), never in
                # one initial list whose items kopf hands to concurrent workers.
                cluster.wait(lambda: len(lipsyncjob_watches(cluster)) > watching or runner.future.done(),
                             message="the operator's LipSyncJob watch")
                yield runner
        finally:
            if runner.future.done():  # shown by pytest when the test fails
                print("---- operator output (tail) ----\n" + runner.output[-20000:])
        assert runner.exception is None, runner.output[-5000:]

    return run

