"""What a render left at its output: the published ``metrics.json`` of one LipSyncJob.

When a LipSyncJob's Job disappears while no operator watched (deleted, or removed by its TTL
after it finished), the Job's conditions and pods are gone with it. The runner's last act is to
publish ``metrics.json`` (its "finished" marker, carrying the job's identity: name, namespace,
uid), so a ``metrics.json`` at the spec's ``output.uri`` whose identity names this LipSyncJob's
uid proves that this very LipSyncJob's render finished; its ``artifacts`` go into the status.

Only ``s3://`` outputs are read (a local path is the runner pod's, not the operator's), and only
when the operator's own environment holds S3 credentials (``AWS_ACCESS_KEY_ID`` and the other
``AWS_*`` names the runner reads; read access to the outputs' ``metrics.json`` is enough). A
transient storage fault raises after the client's retries (``LIPSYNC_S3_RETRY_SECONDS``) and the
reconcile is retried; anything else (no such object, no credentials, access denied) is "not
found": the job then fails with ``JobDeleted``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

from lipsync.errors import LipSyncError, StorageUnavailable

from .queue import Candidate

log = logging.getLogger("lipsync_operator")


def _read(uri: str) -> bytes | None:
    from lipsync.io.publish import open_store  # the runner's S3 client: same env, same retries

    return open_store(uri).get("metrics.json")


async def published(cand: Candidate) -> dict[str, Any] | None:
    """The ``metrics.json`` this LipSyncJob's own render published, or None.

    Raises ``StorageUnavailable`` on a transient fault (after the S3 client's own retries).
    """
    uri = cand.job.spec.output.uri if cand.job is not None else None
    if not uri or not uri.startswith("s3://") or not os.environ.get("AWS_ACCESS_KEY_ID"):
        return None  # not readable from here (a pod-local path), or the operator has no S3 credentials
    try:
        raw = await asyncio.to_thread(_read, uri)
    except StorageUnavailable:
        raise
    except (LipSyncError, ValueError, OSError) as e:
        log.warning("could not read %s/metrics.json for %s/%s: %s", uri, cand.namespace, cand.name, e)
        return None
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    ident = doc.get("identity") if isinstance(doc, dict) else None
    if not isinstance(ident, dict) or ident.get("uid") != cand.uid or ident.get("job") != cand.name:
        return None
    return doc
