"""The operator for real (kopf + kubernetes client) against an emulated API server (kmock)."""

from __future__ import annotations

from conftest import NS, lipsyncjob
from kubesim import CRS, JOBS, PODS, end_pod, finish_job, start_pod

from lipsync.errors import PERMANENT_EXIT_CODES
from lipsync_operator.jobs import job_name


def test_create_makes_one_job_with_gpu_owner_and_name(cluster, run_operator):
    with run_operator():
        cr = cluster.create(CRS, lipsyncjob("talk-1"))
        name = job_name("talk-1", cr["metadata"]["uid"])
        job = cluster.wait(lambda: cluster.get(JOBS, NS, name), message="the Job")
    spec = job["spec"]["template"]["spec"]
    assert spec["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    ref = job["metadata"]["ownerReferences"][0]
    assert ref["uid"] == cr["metadata"]["uid"] and ref["controller"] and ref["blockOwnerDeletion"]
    assert len(cluster.list(JOBS, NS)) == 1
