"""One exception hierarchy for the whole project.

Every error carries a *reason code* (the same string reaches the CLI, ``metrics.json`` and the
LipSyncJob's ``status.reason``), an *exit code* (the runner's process exit status, which the
Job's ``podFailurePolicy`` reads) and whether it is *transient* (worth retrying with backoff).
The table at the bottom is the single place where codes are assigned.
"""

from __future__ import annotations

from dataclasses import dataclass


class LipSyncError(Exception):
    """Base class. ``stage`` names the pipeline stage that failed, when known."""

    reason: str = "InternalError"

    def __init__(self, message: str, *, stage: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.stage = stage

    def __reduce__(self):  # keep the stage across processes (chunk workers)
        return _rebuild, (type(self), self.message, self.stage)

    @property
    def exit_code(self) -> int:
        return REASONS[self.reason].exit_code

    @property
    def transient(self) -> bool:
        return REASONS[self.reason].transient

    def __str__(self) -> str:
        where = f"[{self.stage}] " if self.stage else ""
        return f"{where}{self.reason}: {self.message}"


def _rebuild(cls: type, message: str, stage: str | None) -> "LipSyncError":
    return cls(message, stage=stage)


class InvalidSpec(LipSyncError):
    reason = "InvalidSpec"


class InputNotFound(LipSyncError):
    reason = "InputNotFound"


class InvalidMedia(LipSyncError):
    """The input exists but cannot be decoded (corrupt, truncated, not media)."""

    reason = "InvalidMedia"


class NoVideoStream(LipSyncError):
    reason = "NoVideoStream"


class NoAudioStream(LipSyncError):
    reason = "NoAudioStream"


class NoFaceFound(LipSyncError):
    reason = "NoFaceFound"


class InvalidWeights(LipSyncError):
    reason = "InvalidWeights"


class OutputExists(LipSyncError):
    reason = "OutputExists"


class AccessDenied(LipSyncError):
    reason = "AccessDenied"


class InputTooLarge(LipSyncError):
    reason = "InputTooLarge"


class DeviceUnavailable(LipSyncError):
    reason = "DeviceUnavailable"


class ModelFailed(LipSyncError):
    reason = "ModelFailed"


class ModelTimeout(LipSyncError):
    reason = "ModelTimeout"


class NotAllowed(LipSyncError):
    """The cluster's policy refuses what the spec asks for (a program, an output prefix)."""

    reason = "NotAllowed"


class StorageMisconfigured(LipSyncError):
    """The store cannot be used as configured (endpoint, TLS trust, a request it refuses): retrying will not help."""

    reason = "StorageMisconfigured"


class StorageUnavailable(LipSyncError):
    """A network store (https, S3) did not answer or answered 5xx: retried with backoff."""

    reason = "StorageUnavailable"


class EncodeFailed(LipSyncError):
    reason = "EncodeFailed"


class MissingDependency(LipSyncError):
    """An optional dependency the job needs (PyTorch, for Wav2Lip and scoring) is not installed."""

    reason = "MissingDependency"


@dataclass(frozen=True)
class Reason:
    exit_code: int
    transient: bool
    summary: str


# Exit codes: 0 success; 10-39 permanent (the Job must not retry); 75 (EX_TEMPFAIL) and 1 are
# retried. Kept in one table so the operator's podFailurePolicy is generated from it.
REASONS: dict[str, Reason] = {
    "InvalidSpec": Reason(10, False, "the job spec is invalid"),
    "InputNotFound": Reason(11, False, "an input does not exist"),
    "InvalidMedia": Reason(12, False, "an input cannot be decoded"),
    "NoVideoStream": Reason(13, False, "the video input has no video stream"),
    "NoAudioStream": Reason(14, False, "the audio input has no audio stream"),
    "NoFaceFound": Reason(15, False, "no face was found in the video"),
    "InvalidWeights": Reason(16, False, "the model weights are missing or wrong"),
    "OutputExists": Reason(17, False, "the output already holds another render"),
    "AccessDenied": Reason(18, False, "the storage refused the credentials"),
    "InputTooLarge": Reason(19, False, "an input is over the size limit"),
    "DeviceUnavailable": Reason(20, False, "the spec demands a GPU and none is present"),
    "ModelFailed": Reason(21, False, "the model failed"),
    "ModelTimeout": Reason(22, False, "the model ran past its time limit"),
    "EncodeFailed": Reason(23, False, "ffmpeg failed to encode or mux the output"),
    "StorageMisconfigured": Reason(24, False, "the S3 endpoint, TLS trust or request is wrong"),
    "NotAllowed": Reason(25, False, "the cluster's policy does not allow what the spec asks for"),
    "MissingDependency": Reason(26, False, "an optional dependency (PyTorch) is not installed"),
    "StorageUnavailable": Reason(75, True, "storage did not answer; retried"),
    "InternalError": Reason(1, True, "an unexpected error"),
}

PERMANENT_EXIT_CODES: tuple[int, ...] = tuple(
    sorted(r.exit_code for r in REASONS.values() if not r.transient)
)


def reason_for_exit_code(code: int) -> str | None:
    """The reason code a runner exit status stands for, or None for success/unknown."""
    for name, r in REASONS.items():
        if r.exit_code == code and code != 0:
            return name
    return None
