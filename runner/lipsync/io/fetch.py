"""Fetch: turn an input URI into a local file.

Local paths are used in place (never copied, never modified). https:// is streamed into the
scratch folder with a size limit and an overall deadline (``lipsync.io.limits``), retrying
transient faults with backoff. s3:// goes through ``lipsync.io.s3`` (the minio client).
"""

from __future__ import annotations

import hashlib
import random
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from ..errors import AccessDenied, InputNotFound, InputTooLarge, StorageUnavailable
from .. import env
from . import limits
from .limits import Deadline

DEFAULT_MAX_BYTES = limits.DEFAULT_MAX_BYTES
READ_TIMEOUT_S = 30.0  # per socket read; the deadline bounds the whole download


def is_remote(uri: str) -> bool:
    return uri.startswith(("https://", "http://", "s3://"))


def local_path(uri: str) -> Path:
    return Path(uri[len("file://"):] if uri.startswith("file://") else uri).expanduser()


def fetch(uri: str, scratch: Path, *, field: str, max_bytes: int | None = None) -> tuple[Path, str]:
    """A local file holding ``uri``'s bytes, and their sha256 (hashed as they stream in).
    ``field`` (e.g. 'spec.video') names the input in errors; ``max_bytes`` defaults to its limit
    (``lipsync.io.limits``), and a download gets one deadline, retries included."""
    dest = scratch / f"input-{field.rsplit('.', 1)[-1]}{Path(urlparse(uri).path).suffix}"
    max_bytes = limits.max_bytes_for(field) if max_bytes is None else max_bytes
    if uri.startswith("s3://"):
        from . import s3

        return dest, s3.download(uri, dest, max_bytes=max_bytes, limit_name=limits.limit_name(field))
    if uri.startswith(("https://", "http://")):
        return dest, _download_http(uri, dest, field=field, max_bytes=max_bytes)
    path = local_path(uri)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        # the path in full: a relative one was read from the job file's folder, not the current one
        raise InputNotFound(f"{field} {str(path.absolute())!r} {what}: check the path (a relative path in a job file "
                            "is read from the job file's folder)", stage="fetch")
    return path, sha256(path)


def _download_http(url: str, dest: Path, *, field: str, max_bytes: int) -> str:
    retry_until = time.monotonic() + env.number("LIPSYNC_HTTP_RETRY_SECONDS", 60.0, inclusive=True, stage="fetch")
    deadline = Deadline()
    attempt = 0
    while True:
        try:
            return _download_once(url, dest, field=field, max_bytes=max_bytes, deadline=deadline)
        except StorageUnavailable:
            attempt += 1
            delay = min(30.0, 0.5 * 2**attempt) * random.random()
            if time.monotonic() + delay > min(retry_until, deadline.end):
                raise
            time.sleep(delay)


def _download_once(url: str, dest: Path, *, field: str, max_bytes: int, deadline: Deadline) -> str:
    tmp = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    req = urllib.request.Request(url, headers={"User-Agent": "lipsync-runner"})
    limit = limits.limit_name(field)
    try:
        deadline.check(f"{field} {url}")
        timeout = max(0.5, min(READ_TIMEOUT_S, deadline.remaining()))
        with urllib.request.urlopen(req, timeout=timeout) as resp, open(tmp, "wb") as out:
            length = resp.headers.get("Content-Length")
            if length and int(length) > max_bytes:
                raise InputTooLarge(f"{field} {url} is {int(length)} bytes, over the limit of {max_bytes} ({limit})",
                                    stage="fetch")
            copied = 0
            # read1: whatever has arrived (a server dripping bytes cannot hold one read open), then
            # the deadline is checked; each socket read also times out.
            while chunk := resp.read1(1 << 20):
                copied += len(chunk)
                if copied > max_bytes:
                    raise InputTooLarge(f"{field} {url} is over the limit of {max_bytes} bytes ({limit})", stage="fetch")
                digest.update(chunk)
                out.write(chunk)
                deadline.check(f"{field} {url}", copied)
    except urllib.error.HTTPError as e:
        tmp.unlink(missing_ok=True)
        if e.code in (401, 403):
            raise AccessDenied(f"{field} {url} answered HTTP {e.code}: the URL needs credentials or has expired", stage="fetch") from None
        if e.code >= 500 or e.code == 429:
            raise StorageUnavailable(f"{field} {url} answered HTTP {e.code}", stage="fetch") from None
        raise InputNotFound(f"{field} {url} answered HTTP {e.code}: check the URL", stage="fetch") from None
    except (urllib.error.URLError, socket.timeout, ConnectionError, TimeoutError) as e:
        tmp.unlink(missing_ok=True)
        reason = getattr(e, "reason", e)
        raise StorageUnavailable(f"{field} {url} is unreachable ({reason})", stage="fetch") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(dest)
    return digest.hexdigest()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()

