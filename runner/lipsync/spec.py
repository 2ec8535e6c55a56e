"""The LipSyncJob schema: the one source of truth.

The CLI validates YAML against these models, the operator validates the custom resource against
them, and ``crds/`` is generated from them (``lipsync crd``). Field names are camelCase in YAML,
as Kubernetes resources are; unknown fields are errors that name the field.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from .errors import InvalidSpec

API_GROUP = "lipsync.dev"
API_VERSION = f"{API_GROUP}/v1alpha1"
KIND = "LipSyncJob"
PLURAL = "lipsyncjobs"

# The four artifact URIs (this plus a file name each) and a message must fit the kubelet's 4096-byte
# termination message, which carries the runner's result to the operator.
MAX_OUTPUT_URI = 512
_URI_HELP = "a local path, an https:// URL or an s3://bucket/key URI"
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True
    )


_DOT_SEGMENT = re.compile(r"(^|/)(\.|%2e){1,2}(/|$)", re.I)


def _check_uri(value: str, *, field: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError(f"{field} is empty: give {_URI_HELP}")
    scheme = value.split("://", 1)[0].lower() if "://" in value else ""
    if scheme and scheme not in ("https", "http", "s3", "file"):
        raise ValueError(f"{field} has unsupported scheme {scheme!r}: give {_URI_HELP}")
    if scheme == "s3" and not re.match(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$", value):
        raise ValueError(f"{field} {value!r} is not s3://bucket/key with a valid bucket name")
    path = value.split("://", 1)[-1]
    if scheme in ("http", "https"):
        path = path.split("?", 1)[0].split("#", 1)[0]  # S3 keys may hold '?' and '#'; URLs end there
    if scheme and _DOT_SEGMENT.search(path):
        # S3 keys and URL paths are names, not folders to climb: 'a/../b' would be read as one
        # object by a store and as another by a cache or a policy check.
        raise ValueError(f"{field} {value!r} has a '.' or '..' segment: write the path without them")
    return value


# ---------------------------------------------------------------------------- model options
class BaselineOptions(_Model):
    """The weights-free demo model: opens the mouth with the speech envelope."""

    gain: float = Field(1.0, ge=0.0, le=4.0, description="How wide the mouth opens at full loudness.")


class Wav2LipOptions(_Model):
    batch_size: int | None = Field(
        None, ge=1, le=1024, description="Frames per forward pass; default tuned per device."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when present, else CPU with a warning."
    )
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="auto: fp16 autocast on CUDA, fp32 on CPU."
    )


class CommandOptions(_Model):
    timeout_seconds: int = Field(3600, ge=1, description="Kill the command after this long.")
    crop_size: int = Field(256, ge=32, le=2048, description="Side of the square crop clip given to the command.")
    audio_rate: int = Field(16000, ge=8000, le=192000, description="Sample rate of the audio given to the command.")


class LatentSyncOptions(_Model):
    version: Literal["1.5", "1.6"] = Field("1.5", description="1.5 runs at 256 px, 1.6 at 512 px.")
    inference_steps: int = Field(20, ge=1, le=200, description="Diffusion denoising steps: more is slower and finer.")
    guidance_scale: float = Field(1.5, ge=0.0, le=20.0, description="Classifier-free guidance: how strongly the audio steers the mouth.")
    seed: int = Field(1247, ge=0, description="Random seed, for repeatable renders.")
    deep_cache: bool = Field(False, description="LatentSync's DeepCache: faster inference, slightly softer detail.")
    timeout_seconds: int = Field(7200, ge=1, description="Kill LatentSync after this long.")


MODEL_OPTIONS: dict[str, type[_Model]] = {
    "baseline": BaselineOptions,
    "wav2lip": Wav2LipOptions,
    "command": CommandOptions,
    "latentsync": LatentSyncOptions,
}
ModelName = Literal["baseline", "wav2lip", "command", "latentsync"]
WEIGHTED_MODELS = frozenset({"wav2lip", "latentsync"})
GPU_MODELS = frozenset({"wav2lip", "latentsync", "command"})
DEFAULT_PADDING = {"wav2lip": 0.12}


class ModelSpec(_Model):
    name: ModelName = Field("baseline", description="Which lip-sync model renders the mouth.")
    weights: str | None = Field(
        None, description=f"Checkpoint for wav2lip/latentsync: {_URI_HELP} (a folder or prefix for latentsync)."
    )
    command: list[str] | None = Field(
        None,
        description="For name=command: the program and its arguments (no shell); "
        "{video}, {audio} and {output} are replaced by paths.",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Model-specific options, validated per model (see the README).",
        # The CRD types it as the union of every model's options (lipsync.crd); here, per model.
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )

    @field_validator("weights")
    @classmethod
    def _weights_uri(cls, v: str | None) -> str | None:
        return None if v is None else _check_uri(v, field="spec.model.weights")

    @model_validator(mode="after")
    def _per_model(self) -> "ModelSpec":
        if self.name in WEIGHTED_MODELS and not self.weights:
            raise ValueError(f"model {self.name!r} needs spec.model.weights ({_URI_HELP})")
        if self.name == "command" and not self.command:
            raise ValueError("model 'command' needs spec.model.command, a list of arguments")
        if self.name != "command" and self.command:
            raise ValueError(f"spec.model.command is only for name: command, not {self.name!r}")
        return self

    @field_validator("options")
    @classmethod
    def _options(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        name = info.data.get("name", "baseline")
        try:
            MODEL_OPTIONS[name].model_validate(v)
        except ValidationError as e:
            raise ValueError(f"for model {name!r}: {_brief(e)}") from None
        return v

    def typed_options(self) -> Any:
        return MODEL_OPTIONS[self.name].model_validate(self.options)


class FaceSpec(_Model):
    select: Literal["largest", "index"] = Field(
        "largest", description="largest: the biggest face; index: the index-th face from the left."
    )
    index: int = Field(0, ge=0, description="With select=index: 0 is the leftmost face.")
    padding: float | None = Field(
        None, ge=0.0, le=1.0,
        description="Margin added around the face box, as a fraction of its side; "
        "default 0.12 for wav2lip (trained on tight boxes that reach the chin), 0.25 otherwise.",
    )
    detector: Literal["haar", "haar-alt2", "yunet"] = Field(
        "haar", description="Face detector: haar or haar-alt2 (OpenCV's cascades, shipped; every face verified by "
        "its eyes), or yunet (OpenCV's YuNet from spec.face.weights: finds smaller and turned faces, and landmarks).")
    weights: str | None = Field(
        None, description=f"With detector=yunet: the YuNet ONNX file (face_detection_yunet_2023mar.onnx), {_URI_HELP}.")
    detect_every: int = Field(5, ge=1, le=100, description="Run the detector every N frames; track in between.")

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: str | None) -> str | None:
        return None if v is None else _check_uri(v, field="spec.face.weights")

    @model_validator(mode="after")
    def _detector_weights(self) -> "FaceSpec":
        if self.detector == "yunet" and not self.weights:
            raise ValueError("face detector 'yunet' needs spec.face.weights, the YuNet ONNX file "
                             "(face_detection_yunet_2023mar.onnx from OpenCV's model zoo)")
        if self.detector != "yunet" and self.weights:
            raise ValueError(f"spec.face.weights is only for detector: yunet; {self.detector!r} ships its own")
        if self.index and self.select != "index":
            raise ValueError(f"spec.face.index ({self.index}) is only read with select: index (the index-th face "
                             "from the left); set select: index, or leave index out to take the largest face")
        return self


class TimingSpec(_Model):
    follow: Literal["audio", "video"] = Field(
        "audio",
        description="audio: the output lasts as long as the speech (video trimmed, or extended by "
        "ping-pong looping); video: as long as the video (speech cut, or followed by silence).",
    )


class OutputSpec(_Model):
    uri: str = Field(..., max_length=MAX_OUTPUT_URI,
                     description="Where artifacts go: a local folder, or an s3://bucket/prefix (at most 512 characters).")
    video_codec: Literal["libx264", "libx265"] = Field("libx264", description="Encoder for the output video.")
    crf: int = Field(18, ge=0, le=51, description="Constant rate factor: lower is better quality.")
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"] = Field(
        "medium", description="Encoder speed preset: faster presets trade file size for time.")
    preview: bool = Field(True, description="Write preview.jpg, a before/after contact sheet.")
    overwrite: bool = Field(False, description="Replace a finished render of another job at this output.")

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        return _check_uri(v, field="spec.output.uri")


MAX_PARALLELISM = 64


class RenderSpec(_Model):
    chunk_seconds: float = Field(
        10.0, ge=1.0, le=3600.0,
        description="Length of a render chunk in seconds of output: the unit a preempted render resumes from "
                    "and that workers and pods render in parallel. Output pixels do not depend on it.")


class LipSyncJobSpec(_Model):
    video: str = Field(..., description=f"The talking-head video: {_URI_HELP}.")
    audio: str = Field(..., description=f"The speech to lip-sync to: {_URI_HELP}.")
    model: ModelSpec = Field(default_factory=ModelSpec)
    face: FaceSpec = Field(default_factory=FaceSpec)
    timing: TimingSpec = Field(default_factory=TimingSpec)
    render: RenderSpec = Field(default_factory=RenderSpec,
                               description="How the render is cut up: chunk length (resume and parallel work).")
    parallelism: int = Field(
        1, ge=1, le=MAX_PARALLELISM,
        description="Pods that render the chunks at once (in a cluster): above 1 the operator runs an Indexed Job "
                    "of this many pods, each rendering its share of the chunks (one GPU each for a GPU model), then "
                    "one stitch step that joins them and publishes. Output pixels do not depend on it.")
    output: OutputSpec

    @field_validator("video", "audio")
    @classmethod
    def _inputs(cls, v: str, info: ValidationInfo) -> str:
        return _check_uri(v, field=f"spec.{info.field_name}")

    @property
    def padding(self) -> float:
        """The face padding in effect: the spec's, or the model's default."""
        if self.face.padding is not None:
            return self.face.padding
        return DEFAULT_PADDING.get(self.model.name, 0.25)


class Metadata(BaseModel):
    """Kubernetes object metadata: only ``name`` matters to the runner; the rest is kept."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(..., description="DNS-1123 name of the job.")
    namespace: str | None = None
    uid: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if len(v) > 253 or not _DNS1123.match(v):
            raise ValueError(f"{v!r} is not a DNS-1123 name (lowercase letters, digits, '-', '.')")
        return v


class Condition(_Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None
    last_transition_time: str | None = None
    observed_generation: int | None = None


class IndexCount(_Model):
    done: int = Field(..., ge=0, description="Indices whose pod rendered its share.")
    total: int = Field(..., ge=1, description="spec.parallelism.")


class LipSyncJobStatus(_Model):
    """Written by the operator through the status subresource."""

    phase: Literal["Pending", "Queued", "Running", "Succeeded", "Failed"] | None = Field(
        None, description="Pending → Queued (waiting for the GPU budget) → Running → Succeeded or Failed.")
    progress: int | None = Field(None, ge=0, le=100, description="Percent done, updated every few seconds while Running.")
    stage: str | None = Field(None, description="Where the render is: starting, then fetch, track, render, remux, publish, then done.")
    started_at: str | None = Field(None, description="When the render's Job started (RFC 3339).")
    finished_at: str | None = Field(None, description="When it succeeded or failed (RFC 3339).")
    artifacts: dict[str, str] | None = Field(None, description="URIs of video, preview, track, metrics and log.")
    reason: str | None = Field(None, description="Why it failed: a reason code such as NoFaceFound or InvalidWeights.")
    message: str | None = Field(None, description="What happened and what to do, for a person.")
    observed_generation: int | None = Field(None, description="The spec generation this status describes.")
    job_name: str | None = Field(
        None, description="The batch/v1 Job that renders this LipSyncJob; set once it is created. A LipSyncJob "
        "gets at most one Job: without it, the outcome comes from the published metrics.json, else JobDeleted.")
    spec_digest: str | None = Field(
        None, description="sha256 of the spec the Job renders; a later spec that differs is refused "
        "(Stalled=True, reason SpecImmutable) until it is reverted.")
    indices: IndexCount | None = Field(
        None, description="With spec.parallelism above 1: how many of the Indexed Job's pods (indices) have rendered "
                          "their share of the chunks.")
    stitch_job_name: str | None = Field(
        None, description="With spec.parallelism above 1: the Job that joins the chunks and publishes, once created.")
    conditions: list[Condition] | None = Field(
        None, description="kstatus conditions Ready, Reconciling and Stalled, as Argo CD and Flux read them.")


class LipSyncJob(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    api_version: Literal["lipsync.dev/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["LipSyncJob"] = KIND
    metadata: Metadata
    spec: LipSyncJobSpec
    status: LipSyncJobStatus | None = None


# ---------------------------------------------------------------------------- loading
def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if not str(p).startswith("function-")) or "(document)"


def _brief(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        where = _loc(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check its spelling and the schema: `lipsync crd`)"
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


def parse_job(doc: Any, *, source: str = "<document>") -> LipSyncJob:
    """Validate one parsed YAML/JSON document; raise InvalidSpec naming the field."""
    if not isinstance(doc, dict):
        raise InvalidSpec(f"{source}: expected a LipSyncJob mapping, got {type(doc).__name__}", stage="validate")
    try:
        return LipSyncJob.model_validate(doc)
    except ValidationError as e:
        raise InvalidSpec(f"{source}: {_brief(e)}", stage="validate") from None


def iter_job_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Files named, and the *.yaml/*.yml under folders named (kustomization files skipped)."""
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted([*p.rglob("*.yaml"), *p.rglob("*.yml")]):
                if f.name not in ("kustomization.yaml", "kustomization.yml"):
                    yield f
        else:
            yield p


def meant_as_job(doc: dict) -> bool:
    """Whether a document of another kind was meant as a LipSyncJob: its apiVersion is this API's
    group, or its kind is ``LipSyncJob`` misspelt (other case, a letter or two off). Such a document
    is an error (naming the file), never silently skipped."""
    api = doc.get("apiVersion")
    if isinstance(api, str) and api.split("/", 1)[0] == API_GROUP:
        return True
    kind = doc.get("kind")
    if not isinstance(kind, str):
        return False
    return kind.lower() == KIND.lower() or difflib.SequenceMatcher(None, kind.lower(), KIND.lower()).ratio() >= 0.8


def load_jobs(path: str | Path, *, only_jobs: bool = False) -> list[LipSyncJob]:
    """All LipSyncJobs in a (multi-document) YAML file.

    With ``only_jobs``, documents of other kinds (an Argo CD Application beside the jobs) are
    skipped, unless they look meant as a LipSyncJob (``meant_as_job``: a misspelt kind); otherwise
    they are errors. Raises InvalidSpec naming the file (and document) and the field.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InvalidSpec(f"{path}: no such file", stage="validate") from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise InvalidSpec(f"{path}: not valid YAML: {e}", stage="validate") from None
    jobs = []
    for i, doc in enumerate(docs):
        src = f"{path}" + (f" (document {i + 1})" if len(docs) > 1 else "")
        if only_jobs and isinstance(doc, dict) and doc.get("kind") != KIND and not meant_as_job(doc):
            continue
        jobs.append(parse_job(doc, source=src))
    return jobs
