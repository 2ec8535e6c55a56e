"""How much, and for how long, the runner downloads: size limits and a deadline per download.

A runner pod has a bounded scratch volume (the operator's Job sets an ``ephemeral-storage`` limit
and an emptyDir ``sizeLimit``); these limits fail a job with a clear reason before the kubelet
evicts the pod for filling it, and the deadline stops a server that drips bytes from keeping a
GPU pod alive for ever.

=================================== =========================================== ==============
variable                            meaning                                     default
=================================== =========================================== ==============
``LIPSYNC_MAX_INPUT_BYTES``         largest video or audio input                20 GiB
``LIPSYNC_MAX_WEIGHTS_BYTES``       largest weights file, or the sum of a       20 GiB
                                    weights prefix's objects
``LIPSYNC_DOWNLOAD_DEADLINE_SECONDS`` one download, retries included            3600
=================================== =========================================== ==============

Over a size limit: ``InputTooLarge`` (permanent). Past the deadline: ``StorageUnavailable``
(transient: the Job's backoff tries again later, when the server may be healthy).
"""

from __future__ import annotations

import time

from .. import env
from ..errors import StorageUnavailable

MAX_INPUT_ENV = "LIPSYNC_MAX_INPUT_BYTES"
MAX_WEIGHTS_ENV = "LIPSYNC_MAX_WEIGHTS_BYTES"
DEADLINE_ENV = "LIPSYNC_DOWNLOAD_DEADLINE_SECONDS"
DEFAULT_MAX_BYTES = 20 * 1024**3
DEFAULT_DEADLINE_S = 3600.0


def _number(name: str, default: float, kind: type) -> float:
    return env.number(name, default, kind, stage="fetch")


def max_input_bytes() -> int:
    return int(_number(MAX_INPUT_ENV, DEFAULT_MAX_BYTES, int))


def max_weights_bytes() -> int:
    return int(_number(MAX_WEIGHTS_ENV, DEFAULT_MAX_BYTES, int))


def max_bytes_for(field: str) -> int:
    """The size limit of the input named ``field`` (``spec.model.weights`` or another)."""
    return max_weights_bytes() if field.endswith("weights") else max_input_bytes()


def limit_name(field: str) -> str:
    return MAX_WEIGHTS_ENV if field.endswith("weights") else MAX_INPUT_ENV


class Deadline:
    """The end of one download (``LIPSYNC_DOWNLOAD_DEADLINE_SECONDS`` from now, by default)."""

    def __init__(self, seconds: float | None = None) -> None:
        self.seconds = _number(DEADLINE_ENV, DEFAULT_DEADLINE_S, float) if seconds is None else seconds
        self.end = time.monotonic() + self.seconds

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def check(self, what: str, got: int | None = None) -> None:
        """StorageUnavailable (transient) once the deadline has passed."""
        if self.remaining() <= 0:
            so_far = f" after {got} bytes" if got is not None else ""
            raise StorageUnavailable(
                f"{what} did not finish downloading within {self.seconds:g} s{so_far} ({DEADLINE_ENV}); "
                "the server is too slow or stalled: retried later", stage="fetch")
