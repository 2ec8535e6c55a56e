"""The storage credentials, held by the runner alone.

In a cluster a LipSyncJob's author may run a program of their own (a ``command`` model) as the
runner's user, so no process that program can read may hold a credential. ``confine`` (the
runner calls it first thing in a cluster, where it is its pod's PID 1: no tini or shell above it
holds the environment) makes this process non-dumpable, which closes its ``/proc/<pid>/environ``
and memory to other processes of the same user, and takes every secret-looking variable
(``redact.SECRET_ENV`` and names with SECRET, TOKEN, PASSWORD, ...) out of ``os.environ`` into
this module, so that no child it starts (ffmpeg, chunk workers, the model program) inherits one.
Chunk workers are given them on their stdin (``for_child`` / ``adopt``) and close themselves the
same way. Outside a cluster nothing changes.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from collections.abc import Mapping

from .redact import is_secret_name

_HELD: dict[str, str] = {}


def get(name: str) -> str | None:
    """A credential: the one this process holds, else the environment's (outside a cluster)."""
    return _HELD.get(name) or os.environ.get(name) or None


def held() -> Mapping[str, str]:
    """The secret variables this process took out of its environment (name: value)."""
    return dict(_HELD)


def undumpable() -> None:
    """Make this process non-dumpable: /proc/<pid>/environ and /proc/<pid>/mem become unreadable
    to other processes of the same user. Linux only; elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    except (OSError, AttributeError):  # pragma: no cover - no prctl
        pass


def confine() -> None:
    """This process non-dumpable, and its secret variables out of ``os.environ`` (kept here)."""
    undumpable()
    for name in [k for k in os.environ if is_secret_name(k) and not k.endswith("_FILE")]:  # a *_FILE is a path
        _HELD[name] = os.environ.pop(name)


def for_child() -> bytes:
    """What a chunk worker is given on its stdin: the credentials this process holds."""
    return json.dumps(_HELD).encode()


def adopt(data: bytes) -> None:
    """A chunk worker's side of ``for_child``: closed first, then the credentials taken."""
    undumpable()
    if data.strip():
        _HELD.update({str(k): str(v) for k, v in json.loads(data).items()})
