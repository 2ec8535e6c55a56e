"""Operator benchmark against an emulated API server (kmock), the operator in its own process.

Run from the repository root::

    .venv/bin/python benchmarks/bench_operator.py            # 500 jobs, budget 2
    .venv/bin/python benchmarks/bench_operator.py --jobs 100 --complete 20

What it does (the benchmark plays the Job controller and kubelet, as the tests do):

1. latency: ``--latency`` LipSyncJobs one after another; for each, the time from its POST to
   the operator's Job being readable (the operator is idle otherwise);
2. burst: ``--jobs`` GPU LipSyncJobs POSTed at once with ``LIPSYNC_GPU_BUDGET=--budget``; time
   until every one has a phase (``--budget`` Pending, the rest Queued);
3. drain: ``--complete`` of them run to completion one slot at a time (pod running, pod done,
   Job Complete), each finished Job letting the next queued one start.

It prints the operator's resident memory (VmRSS now, VmHWM peak, from /proc) after each phase
and the API requests the operator made (kopf's and its own), per phase and per LipSyncJob, by
verb and resource.
"""

from __future__ import annotations

import argparse
import collections
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "operator"), str(ROOT / "runner"), str(ROOT / "operator")]

import kubesim  # noqa: E402
from kubesim import CRS, JOBS, Cluster, end_pod, finish_job, rbac_of, start_pod  # noqa: E402

NS = "bench"


def lipsyncjob(name: str, model: dict | None = None) -> dict:
    return kubesim.lipsyncjob(name, model=model, namespace=NS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024  # MiB
    return out


def count_calls(cluster: Cluster, since: int) -> tuple[collections.Counter, int]:
    reqs = cluster.requests()
    calls = collections.Counter()
    for method, path, query in reqs[since:]:
        need = rbac_of(method, path, query)
        calls[need or ("", "(discovery)", "get")] += 1
    return calls, len(reqs)


def report_calls(title: str, calls: collections.Counter, per: int) -> None:
    total = sum(calls.values())
    print(f"  API requests by the operator ({title}): {total} total, {total / max(per, 1):.2f} per LipSyncJob")
    for (group, resource, verb), n in sorted(calls.items(), key=lambda kv: -kv[1]):
        print(f"    {verb:>7} {group + '/' if group else ''}{resource:<24} {n:6d}  ({n / max(per, 1):.2f}/job)")


def phase_of(cluster: Cluster, name: str) -> str | None:
    obj = cluster.get(CRS, NS, name) or {}
    return (obj.get("status") or {}).get("phase")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=500)
    ap.add_argument("--budget", type=int, default=2)
    ap.add_argument("--latency", type=int, default=20)
    ap.add_argument("--complete", type=int, default=30)
    ap.add_argument("--verbose", action="store_true", help="kopf --verbose in the operator's log")
    args = ap.parse_args()

    cluster = Cluster()
    kubeconfig = cluster.kubeconfig(Path(tempfile.mkdtemp()) / "kubeconfig")
    env = dict(os.environ, KUBECONFIG=str(kubeconfig), LIPSYNC_GPU_BUDGET=str(args.budget),
               LIPSYNC_METRICS_PORT="0", LIPSYNC_PROGRESS_INTERVAL="5",
               PYTHONPATH=os.pathsep.join([str(ROOT / "runner"), str(ROOT / "operator")]))
    log = open(Path(tempfile.mkdtemp()) / "operator.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from lipsync_operator.main import main; main()",
         f"--liveness=http://127.0.0.1:{free_port()}/healthz", *(["--verbose"] if args.verbose else [])],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        cluster.wait(lambda: any("watch" in q for _, p, q in cluster.requests() if "lipsyncjobs" in p),
                     timeout=30, message="the operator watching")
        time.sleep(0.5)
        print(f"operator pid {proc.pid}, log {log.name}")
        print(f"  idle memory: {memory(proc.pid)}")
        mark = len(cluster.requests())

        # 1. create → Job latency, one at a time (baseline: no GPU, so the budget is not involved)
        lat = []
        for i in range(args.latency):
            name = f"lat-{i}"
            t0 = time.perf_counter()
            cr = cluster.create(CRS, lipsyncjob(name, {"name": "baseline"}))
            from lipsync_operator.jobs import job_name
            jn = job_name(name, cr["metadata"]["uid"])
            cluster.wait(lambda: cluster.get(JOBS, NS, jn), timeout=30, every=0.002, message=jn)
            lat.append((time.perf_counter() - t0) * 1000)
        print(f"\n1. create -> Job created, {args.latency} sequential LipSyncJobs: "
              f"median {statistics.median(lat):.0f} ms, p95 {sorted(lat)[int(0.95 * (len(lat) - 1))]:.0f} ms, "
              f"max {max(lat):.0f} ms")
        calls, mark = count_calls(cluster, mark)
        report_calls("latency phase", calls, args.latency)

        # 2. burst
        names = [f"burst-{i:04d}" for i in range(args.jobs)]
        t0 = time.perf_counter()
        for name in names:
            cluster.create(CRS, lipsyncjob(name))
        t_posted = time.perf_counter() - t0
        def settled() -> bool:  # statuses written, and kopf's own annotation patches done (no finalizer)
            objs = [o for o in cluster.list(CRS, NS) if o["metadata"]["name"].startswith("burst-")]
            ph = collections.Counter((o.get("status") or {}).get("phase") for o in objs)
            kopf_done = all((o["metadata"].get("annotations") or {}).get("lipsync.dev/last-handled-configuration")
                            for o in objs)
            return ph["Queued"] == args.jobs - args.budget and ph["Pending"] == args.budget and kopf_done
        cluster.wait(settled, timeout=300, every=0.2, message="budget Pending, the rest Queued")
        t_all = time.perf_counter() - t0
        objs = cluster.list(CRS, NS)
        phases = collections.Counter((o.get("status") or {}).get("phase") for o in objs if o["metadata"]["name"] in set(names))
        jobs_now = [j for j in cluster.list(JOBS, NS) if j["metadata"]["name"].startswith("lipsync-burst-")]
        print(f"\n2. burst of {args.jobs} GPU LipSyncJobs (budget {args.budget}): POSTed in {t_posted:.1f} s; "
              f"{args.budget} Pending + {args.jobs - args.budget} Queued after {t_all:.1f} s; phases {dict(phases)}; GPU Jobs created {len(jobs_now)}")
        print(f"  memory: {memory(proc.pid)}")
        calls, mark = count_calls(cluster, mark)
        report_calls("burst phase", calls, args.jobs)

        # 3. drain some of the queue
        done = 0
        t0 = time.perf_counter()
        started_names: list[str] = []
        while done < args.complete:
            jobs = sorted((j for j in cluster.list(JOBS, NS) if j["metadata"]["name"].startswith("lipsync-burst-")
                           and not (j.get("status") or {}).get("conditions")),
                          key=lambda j: j["metadata"]["creationTimestamp"])
            if not jobs:
                time.sleep(0.01)
                continue
            job = jobs[0]
            pod = start_pod(cluster, job)
            end_pod(cluster, pod, exit_code=0, message='{"phase": "Succeeded", "reason": null, "message": "ok", '
                    '"artifacts": {"video": "s3://b/o.mp4", "preview": "s3://b/p.jpg", "metrics": "s3://b/m.json", '
                    '"log": "s3://b/r.log"}}')
            finish_job(cluster, job, ok=True)
            owner = job["metadata"]["ownerReferences"][0]["name"]
            started_names.append(owner)
            cluster.wait(lambda: phase_of(cluster, owner) == "Succeeded", timeout=30, every=0.005, message=owner)
            done += 1
        t_drain = time.perf_counter() - t0
        total_jobs = len([j for j in cluster.list(JOBS, NS) if j["metadata"]["name"].startswith("lipsync-burst-")])
        print(f"\n3. drained {done} renders one slot at a time in {t_drain:.1f} s "
              f"({t_drain / max(done, 1) * 1000:.0f} ms each, including the benchmark's own polling); "
              f"GPU Jobs created so far {total_jobs} ({done} finished, the rest running; never more "
              f"than {args.budget} unfinished)")
        print(f"  memory: {memory(proc.pid)}")
        calls, mark = count_calls(cluster, mark)
        report_calls("drain phase", calls, done)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        cluster.close()


if __name__ == "__main__":
    main()
