"""The CPU budget: how many cores this process may use, which sizes every thread pool it starts.

Where a pod runs on a 64-core node with ``requests.cpu: 4``, the kernel still shows 64 cores, and
tools that size themselves from them (x264's threads, OpenCV's and torch's pools, the runner's
own workers) start 16 times the threads the pod was given: the pod's share of CPU is what it is,
and every extra frame thread and worker holds its own frames (x264 with 96 threads, or 16 chunk
workers each with its model and encoder, runs out of a 16 GiB memory limit at 1080p).

The budget is the smallest of:

- ``LIPSYNC_CPUS`` (whole cores): the operator sets it from the pod's own CPU request (the
  Downward API, rounded up to a whole core);
- the cgroup's CPU quota (``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``
  in v1), rounded up: a CPU limit;
- the cores this process may run on (its affinity).

``constrained()`` says whether the budget is smaller than the cores in view, i.e. whether thread
pools that size themselves must be told.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from . import env
from .errors import InvalidSpec

CPUS_ENV = "LIPSYNC_CPUS"
CGROUP_ROOT = Path("/sys/fs/cgroup")
_USER_SET = frozenset(k for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS") if k in os.environ)


def visible() -> int:
    """Cores this process may run on (its affinity where the OS tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def cgroup_quota(root: Path = CGROUP_ROOT) -> int | None:
    """Whole cores the cgroup's CPU quota allows (rounded up), None without a quota.

    Reads ``root/cpu.max`` (cgroup v2: ``"max 100000"`` or ``"<quota> <period>"`` in µs), else
    ``root/cpu/cpu.cfs_quota_us`` and ``cpu.cfs_period_us`` (v1; quota -1: none). Files that are
    missing or do not parse count as no quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota == "max":
            return None
        q, p = int(quota), int(period)
    except (OSError, ValueError):
        try:
            q = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
            p = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            return None
    if q <= 0 or p <= 0:
        return None
    return max(1, math.ceil(q / p))


def budget(root: Path = CGROUP_ROOT) -> int:
    """Cores this process may use: the smallest of LIPSYNC_CPUS, the cgroup quota and its affinity.

    Raises InvalidSpec when LIPSYNC_CPUS is set but not a whole number of at least 1."""
    limits = [visible()]
    asked = env.number(CPUS_ENV, 0, int, minimum=1, inclusive=True, stage="render") if os.environ.get(CPUS_ENV, "").strip() else 0
    if asked:
        limits.append(int(asked))
    quota = cgroup_quota(root)
    if quota is not None:
        limits.append(quota)
    return max(1, min(limits))


def memory_limit(root: Path = CGROUP_ROOT) -> int | None:
    """The cgroup's memory limit in bytes (a pod's ``limits.memory``), None without one.

    Reads ``root/memory.max`` (cgroup v2: ``max`` or bytes), else
    ``root/memory/memory.limit_in_bytes`` (v1: a huge number when unlimited)."""
    for path in (root / "memory.max", root / "memory" / "memory.limit_in_bytes"):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            value = int(text)
        except ValueError:
            return None
        return value if 0 < value < 1 << 60 else None
    return None


def constrained(root: Path = CGROUP_ROOT) -> bool:
    """Whether the budget is below the cores in view (thread pools must then be told their size)."""
    return budget(root) < visible()


def apply_to_libraries() -> None:
    """Size OpenCV's pool (and torch's and OpenMP's, through their variables, for this process
    if torch is not imported yet and for every Python child) to the budget, where it is smaller
    than the cores in view. Variables the user set are kept. A LIPSYNC_CPUS that does not parse is
    left to the stage that reads it next, which fails the job naming it."""
    try:
        if not constrained():
            return
    except InvalidSpec:
        return
    n = str(budget())
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(name, n)
    import cv2

    cv2.setNumThreads(int(n))
    if "torch" in sys.modules and "OMP_NUM_THREADS" not in _USER_SET:
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
