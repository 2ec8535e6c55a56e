"""The runner's own malloc settings: set for this Python process, kept from its ffmpeg children.

glibc keeps freed memory instead of unmapping each large model activation after use (Wav2Lip on
the CPU: ~100k page faults per batch otherwise; 25-80 % more frames/s measured, see
benchmarks/bench_wav2lip.py). glibc reads ``GLIBC_TUNABLES`` at process start only, so ``run``
and ``score`` re-execute once with it set (the image sets it in its environment instead).

An ffmpeg child must not inherit it: an x264 encoder that never returns memory to the system held
about 65 MB more at 1080p (564 MB resident instead of 497). So :func:`adopt` takes the setting
out of the environment once the process has started with it; Python children that run the model
(chunk workers) get it back from :func:`python_child_env`. A ``GLIBC_TUNABLES`` the user set to
anything else is theirs and left alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=2147483648:glibc.malloc.trim_threshold=4294967296"
_adopted: str | None = None


def adopt() -> None:
    """Take this process's own tunables (ours) out of ``os.environ``; children no longer inherit them."""
    global _adopted
    if os.environ.get("GLIBC_TUNABLES") == MALLOC_TUNABLES:
        _adopted = os.environ.pop("GLIBC_TUNABLES")


def tunables() -> str | None:
    """The GLIBC_TUNABLES this process started with (what metrics.json records)."""
    return _adopted or os.environ.get("GLIBC_TUNABLES")


def python_child_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` for a child that runs the runner's Python (and the model): with the tunables back."""
    out = dict(env)
    if _adopted is not None:
        out["GLIBC_TUNABLES"] = _adopted
    return out
