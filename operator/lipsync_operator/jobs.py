"""LipSyncJob (parsed) + settings → the ``batch/v1`` Job that renders it. Pure functions.

The Job is named deterministically from the LipSyncJob's name and uid (:func:`job_name`), so an
operator that restarts, or handles the same event twice, finds the Job it already made (HTTP 409,
then adopt) instead of starting a second render.

Failure handling is the Job controller's, driven by the runner's exit code (``lipsync.errors``):
``podFailurePolicy`` ignores pod disruptions (eviction, preemption, node drain: retried without
counting against ``backoffLimit``) and fails the Job at once on a permanent exit code; anything
else (75 StorageUnavailable, 1 InternalError, OOM kills) is retried up to ``backoffLimit``.

``spec.parallelism: N`` above 1 splits the render over pods (:func:`job_manifest` ``step``):

* the **render** Job is an Indexed Job (``completionMode: Indexed``, ``completions`` =
  ``parallelism`` = N) whose pods run the runner with ``--shard auto/N`` (the index comes from
  ``JOB_COMPLETION_INDEX``); each renders its share of the chunks into the work area and publishes
  nothing. Retries are per index (``backoffLimitPerIndex`` = ``LIPSYNC_BACKOFF_LIMIT``), and
  ``maxFailedIndexes: 0`` fails the Job as soon as one index has failed for good (no stitch could
  follow); the pod failure policy is the same;
* the **stitch** Job (:func:`stitch_job_name`), created by the operator once the render Job is
  Complete, is an ordinary Job running the plain runner: it finds every chunk finished, joins
  them and publishes. It asks for no GPU (``CUDA_VISIBLE_DEVICES`` empty: wav2lip's ``auto``
  device falls back to the CPU; the model is loaded but renders nothing unless a chunk has gone
  missing), except with ``device: cuda``, which must see one.

A GPU render Job takes N slots of the operator's GPU budget (:func:`gpu_slots`).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from lipsync.errors import PERMANENT_EXIT_CODES
from lipsync.policy import IN_CLUSTER_ENV
from lipsync.spec import API_VERSION, GPU_MODELS, KIND, LipSyncJob

from .settings import Settings

RUNNER_UID = 10001  # the image's non-root user (Dockerfile: USER 10001:10001)

CONTAINER = "runner"
CPUS_ENV = "LIPSYNC_CPUS"  # the runner's CPU budget (runner/lipsync/cpus.py)
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "lipsync-operator"
UID_LABEL = "lipsync.dev/job-uid"          # on the Job and its pods: which LipSyncJob they render
GPU_LABEL = "lipsync.dev/gpu"              # "true" when the Job counts against the GPU budget
STEP_LABEL = "lipsync.dev/step"            # "render" (the pods that render chunks) or "stitch"
STITCH_GPU_LABEL = "lipsync.dev/stitch-gpu"  # on an Indexed render Job: "true" when its stitch Job takes a GPU
RENDER, STITCH = "render", "stitch"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"  # an Indexed Job's pod: its index
OWNER_ANNOTATION = "lipsync.dev/owner"     # "<namespace>/<name>" of the LipSyncJob
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
RESULT_FILE = "/dev/termination-log"
SCRATCH = "/tmp"  # the one writable volume of a runner pod (an emptyDir; the root filesystem is read-only)
RUNNER_COMMAND = ["lipsync", "run", "--job-env", "LIPSYNC_JOB", "--log-format", "json"]

# A Job name is a label value (≤ 63); an Indexed Job's pods also get the hostname
# ``<job name>-<index>``, a DNS label (≤ 63) with an index up to 63 (spec.parallelism ≤ 64): 60.
_MAX_NAME = 60


def job_name(name: str, uid: str, generation: int | None = None) -> str:
    """``lipsync-<name>-<8 hex of sha256(uid)>``, the name trimmed so the whole fits 60 chars
    (room for an Indexed Job's ``-<index>`` in its pods' 63-char hostnames).

    A DNS-1123 label (dots become dashes), so it is also a valid ``job-name`` label value.
    The uid suffix keeps a deleted-and-recreated LipSyncJob of the same name from adopting the
    old Job while its deletion is still in progress.
    """
    seed = uid if generation is None else f"{uid}/{generation}"  # a Kueue replacement (see controller)
    digest = hashlib.sha256(seed.encode()).hexdigest()[:8]
    stem = re.sub(r"[^a-z0-9-]", "-", name.lower())
    room = _MAX_NAME - len("lipsync-") - 1 - len(digest)
    stem = stem[:room].strip("-") or "job"
    return f"lipsync-{stem}-{digest}"


def stitch_job_name(name: str, uid: str) -> str:
    """The stitch Job's name: :func:`job_name` with ``-stitch`` (the stem trimmed to keep 60 chars)."""
    base = job_name(name, uid)
    stem, digest = base[len("lipsync-"):].rsplit("-", 1)
    room = _MAX_NAME - len("lipsync-") - len("-stitch") - 1 - len(digest)
    return f"lipsync-{stem[:room].strip('-') or 'job'}-{digest}-stitch"


def parallelism(job: LipSyncJob) -> int:
    """How many pods render at once (``spec.parallelism``, 1 without it)."""
    return int(getattr(job.spec, "parallelism", 1) or 1)


def gpu_slots(job: LipSyncJob) -> int:
    """GPU budget slots the render takes: one per pod of a GPU model, 0 for a CPU model."""
    return parallelism(job) if needs_gpu(job) else 0


def needs_gpu(job: LipSyncJob) -> bool:
    """GPU models get one GPU, unless their options pin them to the CPU (wav2lip ``device: cpu``)."""
    model = job.spec.model
    if model.name not in GPU_MODELS:
        return False
    return model.options.get("device") != "cpu"


def runner_document(job: LipSyncJob) -> dict[str, Any]:
    """What the runner reads from ``$LIPSYNC_JOB``: identity and the validated spec (defaults filled)."""
    meta = job.metadata
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": meta.name, "namespace": meta.namespace, "uid": meta.uid},
        "spec": job.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }


def job_manifest(job: LipSyncJob, settings: Settings, step: str = RENDER, *,
                 generation: int | None = None) -> dict[str, Any]:
    """The complete ``batch/v1`` Job manifest for one LipSyncJob.

    ``step``: ``render`` (one pod, or with ``spec.parallelism`` N > 1 an Indexed Job of N pods
    each rendering its share), or ``stitch`` (after an Indexed render: join and publish).
    ``generation``: set for a render Job that replaces a never-admitted Kueue Job after a spec
    edit (its name must differ from the one being deleted); None for the first Job.
    """
    meta = job.metadata
    if not meta.uid or not meta.namespace:
        raise ValueError("a LipSyncJob from the cluster has metadata.uid and metadata.namespace")
    if step not in (RENDER, STITCH):
        raise ValueError(f"step {step!r}: render or stitch")
    pods = parallelism(job) if step == RENDER else 1
    gpu = needs_gpu(job)
    if step == STITCH:
        gpu = gpu and job.spec.model.options.get("device") == "cuda"
    name = job_name(meta.name, meta.uid, generation) if step == RENDER else stitch_job_name(meta.name, meta.uid)

    labels = {
        "app.kubernetes.io/name": "lipsync",
        "app.kubernetes.io/component": "runner",
        MANAGED_BY_LABEL: MANAGED_BY,
        UID_LABEL: meta.uid,
        GPU_LABEL: "true" if gpu else "false",
        STEP_LABEL: step,
    }
    job_labels = dict(labels)
    if step == RENDER and pods > 1:  # the stitch to come: the budget keeps its GPU slot (queue.plan)
        job_labels[STITCH_GPU_LABEL] = "true" if gpu and job.spec.model.options.get("device") == "cuda" else "false"
    if settings.kueue_queue:
        job_labels[KUEUE_QUEUE_LABEL] = settings.kueue_queue

    env: list[dict[str, Any]] = [
        {"name": "LIPSYNC_JOB", "value": json.dumps(runner_document(job), separators=(",", ":"))},
        {"name": "LIPSYNC_RESULT_FILE", "value": RESULT_FILE},
        # The runner applies the same policy the operator did (lipsync.policy): defence in depth.
        {"name": IN_CLUSTER_ENV, "value": "1"},
        *({"name": k, "value": v} for k, v in sorted(settings.cluster_policy(meta.namespace).env().items())),
        *({"name": k, "value": v} for k, v in sorted(settings.runner_limits_env().items())),
        *({"name": k, "value": v} for k, v in sorted(settings.runner_cache_env(meta.namespace).items())),
        # The root filesystem is read-only: everything the runner (and torch, ffmpeg, a model's
        # program) writes goes to the size-limited /tmp volume.
        {"name": "TMPDIR", "value": SCRATCH},
        {"name": "HOME", "value": SCRATCH},
        {"name": "XDG_CACHE_HOME", "value": f"{SCRATCH}/.cache"},
    ]
    if settings.runner_cpu:
        # The pod's CPU request, in whole cores (rounded up): the runner sizes its encoder,
        # decoders, workers and library pools to it, not to the node's cores (lipsync.cpus).
        env.append({"name": CPUS_ENV, "valueFrom": {"resourceFieldRef": {
            "containerName": CONTAINER, "resource": "requests.cpu", "divisor": "1"}}})
    if not gpu:
        env.append({"name": "CUDA_VISIBLE_DEVICES", "value": ""})  # no GPU was allocated: use none
    if settings.s3_endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": settings.s3_endpoint})

    resources: dict[str, dict[str, str]] = {}
    requests = {k: v for k, v in (("cpu", settings.runner_cpu), ("memory", settings.runner_memory),
                                  ("ephemeral-storage", settings.runner_ephemeral_storage)) if v}
    if requests:
        resources["requests"] = requests
    # Memory and disk: the pod is OOM-killed or evicted, not the node starved.
    limits = {k: v for k, v in (("memory", settings.runner_memory),
                                ("ephemeral-storage", settings.runner_ephemeral_storage)) if v}
    if gpu:
        limits[settings.gpu_resource] = "1"
    if limits:
        resources["limits"] = limits

    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": settings.runner_image,
        # command, not args: the runner is the pod's PID 1, not the image's tini, so no process a
        # job's own program can read holds the credentials (lipsync.credentials)
        "command": list(RUNNER_COMMAND) + (["--shard", f"auto/{pods}"] if pods > 1 else []),
        "env": env,
        "resources": resources,
        "terminationMessagePath": RESULT_FILE,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": SCRATCH}],
    }
    if settings.s3_secret:
        container["envFrom"] = [{"secretRef": {"name": settings.s3_secret}}]

    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # the runner never talks to the API server
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUNNER_UID,
            "runAsGroup": RUNNER_UID,
            "fsGroup": RUNNER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": settings.scratch_size_limit}
                     if settings.scratch_size_limit else {}}],
    }
    if settings.runner_service_account:
        pod_spec["serviceAccountName"] = settings.runner_service_account
    if settings.node_selector:
        pod_spec["nodeSelector"] = dict(settings.node_selector)
    if settings.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in settings.tolerations]
    if settings.priority_class:
        pod_spec["priorityClassName"] = settings.priority_class

    spec: dict[str, Any] = {
        "backoffLimit": settings.backoff_limit,
        "activeDeadlineSeconds": settings.active_deadline_seconds,
        "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
        "completions": pods,
        "parallelism": pods,
        # Do not start a replacement pod before the failed one is gone (no two pods on a GPU).
        "podReplacementPolicy": "Failed",
        "podFailurePolicy": {
            "rules": [
                # Evicted, preempted, drained: not the job's fault; retry, do not count.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                # The runner's permanent reasons (lipsync.errors): no retry can help.
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": CONTAINER,
                        "operator": "In",
                        "values": list(PERMANENT_EXIT_CODES),
                    },
                },
            ]
        },
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    }
    if pods > 1:
        # One pod per index, each retried on its own; one index failed for good fails the Job
        # at once (the stitch needs every chunk). backoffLimit then defaults to "unlimited".
        del spec["backoffLimit"]
        spec.update(completionMode="Indexed", backoffLimitPerIndex=settings.backoff_limit, maxFailedIndexes=0)
    if settings.kueue_queue:
        spec["suspend"] = True  # Kueue admits (unsuspends) it when quota allows

    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": meta.namespace,
            "labels": job_labels,
            "annotations": {OWNER_ANNOTATION: f"{meta.namespace}/{meta.name}"},
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": meta.name,
                    "uid": meta.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec,
    }


def owner_of(job: dict[str, Any]) -> tuple[str, str] | None:
    """(namespace, name) of the LipSyncJob that controls a Job, or None if not ours."""
    meta = job.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("controller") and ref.get("apiVersion", "").startswith("lipsync.dev/"):
            return meta.get("namespace"), ref.get("name")
    return None


def step_of(job: dict[str, Any]) -> str:
    """``render`` or ``stitch``: which step a Job (or pod) runs (Jobs before issue 15: render)."""
    return ((job.get("metadata") or {}).get("labels") or {}).get(STEP_LABEL) or RENDER


def index_of(pod: dict[str, Any]) -> int | None:
    """An Indexed Job's pod: its completion index (annotation, or label since Kubernetes 1.28)."""
    meta = pod.get("metadata") or {}
    value = (meta.get("annotations") or {}).get(COMPLETION_INDEX) or (meta.get("labels") or {}).get(COMPLETION_INDEX)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def pods_of(pods: list[dict[str, Any]], uid: str) -> list[dict[str, Any]]:
    """The pods rendering the LipSyncJob ``uid``, oldest first (a list call may return more)."""
    mine = [p for p in pods if ((p.get("metadata") or {}).get("labels") or {}).get(UID_LABEL) == uid]
    return sorted(mine, key=lambda p: ((p.get("metadata") or {}).get("creationTimestamp") or "", p["metadata"].get("name", "")))


def spec_digest(spec: dict[str, Any]) -> str:
    """sha256 (hex) of a runner document's spec (canonical JSON): which spec a Job renders.

    ``parallelism: 1`` (the default of a field added after digests were first recorded) is left
    out, so a spec, a Job or a ``status.specDigest`` from before it existed keeps its digest and
    an upgraded operator refuses no edit that was never made.
    """
    if spec.get("parallelism") == 1:
        spec = {k: v for k, v in spec.items() if k != "parallelism"}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def runner_document_of(job: dict[str, Any]) -> dict[str, Any] | None:
    """The runner document (``LIPSYNC_JOB``) a Job's runner container renders; None if it has none."""
    for c in (((job.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []:
        if c.get("name") != CONTAINER:
            continue
        for e in c.get("env") or []:
            if e.get("name") == "LIPSYNC_JOB" and e.get("value"):
                try:
                    doc = json.loads(e["value"])
                except ValueError:
                    return None
                return doc if isinstance(doc, dict) else None
    return None


def job_spec_digest(job: dict[str, Any]) -> str | None:
    """:func:`spec_digest` of the spec in a Job's ``LIPSYNC_JOB``; None if it has none."""
    spec = (runner_document_of(job) or {}).get("spec")
    return spec_digest(spec) if isinstance(spec, dict) else None


def made_as(job: dict[str, Any]) -> str:
    """How much of the GPU budget a Job takes, as text to compare a Job found under our name with
    the manifest we would make: spec.parallelism, completions, completionMode, suspend and each
    container's accelerator limits (fields the API server does not default; an older operator's
    Job of the same LipSyncJob compares equal even where its image, memory or settings differ)."""
    spec = job.get("spec") or {}
    pod = (spec.get("template") or {}).get("spec") or {}
    return json.dumps({
        "parallelism": spec.get("parallelism"), "completions": spec.get("completions"),
        "completionMode": spec.get("completionMode"), "suspend": bool(spec.get("suspend")),
        "accelerators": [{k: v for k, v in ((c.get("resources") or {}).get("limits") or {}).items()
                          if k not in ("cpu", "memory", "ephemeral-storage")} for c in pod.get("containers") or []],
    }, sort_keys=True)


def job_facts_body(job: dict[str, Any]) -> dict[str, Any]:
    """The parts of a Job its LipSyncJob's status is computed from (kept in the operator's index)."""
    meta = job.get("metadata") or {}
    spec = job.get("spec") or {}
    return {
        "metadata": {"name": meta.get("name"), "labels": dict(meta.get("labels") or {})},
        "spec": {"suspend": spec.get("suspend"), "completions": spec.get("completions"),
                 "parallelism": spec.get("parallelism"), "completionMode": spec.get("completionMode")},
        "status": dict(job.get("status") or {}),
        "specDigest": job_spec_digest(job),
    }
