"""Operator settings: environment variables, parsed once into one frozen dataclass.

The Helm chart sets exactly these names (keep them in step with ``charts/``):

==================================== ============================== ==============================
variable                             meaning                        default
==================================== ============================== ==============================
``LIPSYNC_RUNNER_IMAGE``             image of the runner Jobs       ``lipsync-operator:latest``
``LIPSYNC_RUNNER_SERVICE_ACCOUNT``   the runner pods' account       (namespace default)
``LIPSYNC_GPU_RESOURCE``             extended resource for GPUs     ``nvidia.com/gpu``
``LIPSYNC_GPU_BUDGET``               GPU Jobs running at once       ``2``
``LIPSYNC_KUEUE_QUEUE``              Kueue LocalQueue; set: Kueue   (unset: own budget)
                                     admits, the budget is bypassed
``LIPSYNC_NODE_SELECTOR``            JSON object                    ``{}``
``LIPSYNC_TOLERATIONS``              JSON list                      ``[]``
``LIPSYNC_PRIORITY_CLASS``           priorityClassName of the pods  (none)
``LIPSYNC_S3_SECRET``                Secret for ``envFrom``         (none)
``LIPSYNC_S3_ENDPOINT``              passed as ``AWS_ENDPOINT_URL`` (none)
``LIPSYNC_ACTIVE_DEADLINE_SECONDS``  Job ``activeDeadlineSeconds``  ``21600``
``LIPSYNC_TTL_SECONDS_AFTER_FINISHED`` Job ``ttlSecondsAfterFinished`` ``86400``
``LIPSYNC_BACKOFF_LIMIT``            Job ``backoffLimit``           ``3``
``LIPSYNC_RUNNER_CPU``               cpu request of the runner      (none)
``LIPSYNC_RUNNER_MEMORY``            memory request = limit          (none)
``LIPSYNC_PROGRESS_INTERVAL``        seconds between progress polls ``5``
``LIPSYNC_RESYNC_SECONDS``           seconds between resyncs of     ``30``
                                     every unfinished LipSyncJob
``LIPSYNC_LEASE_NAMESPACE``          namespace of the leader-       (unset: no election,
                                     election Lease                 the replica always acts)
``LIPSYNC_LEASE_NAME``               name of that Lease             ``lipsync-operator``
``LIPSYNC_LEASE_SECONDS``            leaseDurationSeconds           ``15``
``LIPSYNC_METRICS_PORT``             Prometheus port (0: off)       ``9090``
``LIPSYNC_RUNNER_EPHEMERAL_STORAGE`` ephemeral-storage request = limit (none)
                                     of the runner (its scratch,
                                     logs and writable layers)
``LIPSYNC_SCRATCH_SIZE_LIMIT``       sizeLimit of the /tmp emptyDir  (none)
``LIPSYNC_MAX_INPUT_BYTES``          passed to the runner            (runner default: 20 GiB)
``LIPSYNC_MAX_WEIGHTS_BYTES``        passed to the runner            (runner default: 20 GiB)
``LIPSYNC_DOWNLOAD_DEADLINE_SECONDS`` passed to the runner           (runner default: 3600)
``LIPSYNC_JOB_NAMESPACES``          comma-separated namespaces the (unset: all namespaces, for
                                     operator works in; LipSyncJobs  development; the chart
                                     elsewhere are left alone        always sets it)
``LIPSYNC_OUTPUT_PREFIX``            where each namespace's outputs  (none: anywhere)
                                     must go; ``{namespace}`` is
                                     replaced, e.g.
                                     ``s3://renders/{namespace}/``
``LIPSYNC_TRACK_CACHE``              where each namespace's face     (none: every job tracks
                                     tracks are kept for reuse by    its video itself)
                                     later jobs on the same video;
                                     ``{namespace}`` is replaced,
                                     e.g. ``s3://tracks/{namespace}/``
``LIPSYNC_COMMAND_POLICY``           JSON object: namespace (or     ``{}`` (no ``command`` model
                                     ``*``) → programs a ``command``  anywhere)
                                     model may run (``["*"]``: any)
==================================== ============================== ==============================

Parsed once per operator run (kopf's startup handler; ``main`` parses first to fail fast with a
message naming the variable, before kopf starts).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Mapping

from lipsync.policy import ANY, ClusterPolicy


_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class SettingsError(ValueError):
    """An environment variable holds a value the operator cannot use."""


@dataclasses.dataclass(frozen=True)
class Settings:
    runner_image: str = "lipsync-operator:latest"
    runner_service_account: str | None = None
    gpu_resource: str = "nvidia.com/gpu"
    gpu_budget: int = 2
    kueue_queue: str | None = None
    node_selector: Mapping[str, str] = dataclasses.field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    priority_class: str | None = None
    s3_secret: str | None = None
    s3_endpoint: str | None = None
    active_deadline_seconds: int = 21600
    ttl_seconds_after_finished: int = 86400
    backoff_limit: int = 3
    runner_cpu: str | None = None
    runner_memory: str | None = None
    progress_interval: float = 5.0
    resync_seconds: float = 30.0
    lease_namespace: str | None = None
    lease_name: str = "lipsync-operator"
    lease_seconds: float = 15.0
    metrics_port: int = 9090
    health_port: int = 8080
    command_policy: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    job_namespaces: tuple[str, ...] = ()  # empty: every namespace (a ClusterRole's worth of access)
    output_prefix: str | None = None  # a template: {namespace} is replaced
    track_cache: str | None = None  # a template: {namespace} is replaced
    runner_ephemeral_storage: str | None = None
    scratch_size_limit: str | None = None
    max_input_bytes: int | None = None
    max_weights_bytes: int | None = None
    download_deadline_seconds: int | None = None

    def runner_limits_env(self) -> dict[str, str]:
        """The runner's download limits (lipsync.io.limits), where configured."""
        pairs = (("LIPSYNC_MAX_INPUT_BYTES", self.max_input_bytes), ("LIPSYNC_MAX_WEIGHTS_BYTES", self.max_weights_bytes),
                 ("LIPSYNC_DOWNLOAD_DEADLINE_SECONDS", self.download_deadline_seconds))
        return {k: str(v) for k, v in pairs if v is not None}

    def runner_cache_env(self, namespace: str) -> dict[str, str]:
        """The runner's track cache (lipsync.video.trackcache) for a job in ``namespace``: that
        namespace's own prefix, so no team reads another's tracks or plants one in them."""
        return {"LIPSYNC_TRACK_CACHE": self.track_cache.replace("{namespace}", namespace)} if self.track_cache else {}

    def cluster_policy(self, namespace: str) -> ClusterPolicy:
        """What a LipSyncJob in ``namespace`` may ask for (lipsync.policy), the runner's copy included."""
        programs = (*self.command_policy.get(namespace, ()), *self.command_policy.get(ANY, ()))
        prefix = self.output_prefix.replace("{namespace}", namespace) if self.output_prefix else None
        return ClusterPolicy(commands=(ANY,) if ANY in programs else tuple(dict.fromkeys(programs)), output_prefix=prefix)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env

        def text(name: str, default: str | None = None) -> str | None:
            value = env.get(name, "").strip()
            return value or default

        def number(name: str, default: float, kind: type = int, minimum: float = 0) -> Any:
            raw = text(name)
            if raw is None:
                return default
            try:
                value = kind(raw)
            except ValueError:
                raise SettingsError(f"{name}={raw!r} is not {'an integer' if kind is int else 'a number'}") from None
            if value < minimum:
                raise SettingsError(f"{name}={raw!r} must be >= {minimum}")
            return value

        def js(name: str, want: type, default: Any) -> Any:
            raw = text(name)
            if raw is None:
                return default
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as e:
                raise SettingsError(f"{name} is not valid JSON: {e}") from None
            if not isinstance(value, want):
                raise SettingsError(f"{name} must be a JSON {'object' if want is dict else 'list'}, got {raw!r}")
            return value

        node_selector = js("LIPSYNC_NODE_SELECTOR", dict, {})
        if not all(isinstance(v, str) for v in node_selector.values()):
            raise SettingsError("LIPSYNC_NODE_SELECTOR values must be strings")
        tolerations = js("LIPSYNC_TOLERATIONS", list, [])
        if not all(isinstance(t, dict) for t in tolerations):
            raise SettingsError("LIPSYNC_TOLERATIONS must be a JSON list of objects")

        command_policy = js("LIPSYNC_COMMAND_POLICY", dict, {})
        if not all(isinstance(v, list) and all(isinstance(p, str) and p for p in v) for v in command_policy.values()):
            raise SettingsError('LIPSYNC_COMMAND_POLICY must map namespaces (or "*") to lists of programs, '
                                'e.g. {"research": ["/opt/musetalk/run.sh"]} or {"research": ["*"]}')

        job_namespaces = tuple(dict.fromkeys(n.strip() for n in (text("LIPSYNC_JOB_NAMESPACES") or "").split(",")
                                             if n.strip()))
        bad = [n for n in job_namespaces if not _DNS1123_LABEL.match(n)]
        if bad:
            raise SettingsError(f"LIPSYNC_JOB_NAMESPACES: {bad[0]!r} is not a namespace name")

        def optional(name: str) -> int | None:
            return number(name, None, minimum=1) if text(name) is not None else None

        def namespace_prefix(name: str, example: str, why: str) -> str | None:
            """An s3:// template holding {namespace}: each namespace gets a prefix of its own."""
            value = text(name)
            if value is None or value.lower() == "off":  # "off" as the runner reads it
                return None
            if not value.startswith("s3://"):
                raise SettingsError(f"{name}={value!r} must be an s3:// prefix the runner pods can reach, "
                                    f"e.g. {example}")
            if "{namespace}" not in value:
                raise SettingsError(f"{name}={value!r} must hold {{namespace}}: one prefix for every namespace {why}")
            return value

        output_prefix = namespace_prefix("LIPSYNC_OUTPUT_PREFIX", "s3://renders/{namespace}/",
                                         "would let them overwrite each other")
        track_cache = namespace_prefix("LIPSYNC_TRACK_CACHE", "s3://lipsync-tracks/{namespace}/",
                                       "would let one team's jobs read, or plant, another's face tracks")

        return cls(
            output_prefix=output_prefix,
            track_cache=track_cache,
            runner_ephemeral_storage=text("LIPSYNC_RUNNER_EPHEMERAL_STORAGE"),
            scratch_size_limit=text("LIPSYNC_SCRATCH_SIZE_LIMIT"),
            max_input_bytes=optional("LIPSYNC_MAX_INPUT_BYTES"),
            max_weights_bytes=optional("LIPSYNC_MAX_WEIGHTS_BYTES"),
            download_deadline_seconds=optional("LIPSYNC_DOWNLOAD_DEADLINE_SECONDS"),
            job_namespaces=job_namespaces,
            command_policy={k: tuple(v) for k, v in command_policy.items()},
            runner_image=text("LIPSYNC_RUNNER_IMAGE", cls.runner_image),
            runner_service_account=text("LIPSYNC_RUNNER_SERVICE_ACCOUNT"),
            gpu_resource=text("LIPSYNC_GPU_RESOURCE", cls.gpu_resource),
            gpu_budget=number("LIPSYNC_GPU_BUDGET", cls.gpu_budget),
            kueue_queue=text("LIPSYNC_KUEUE_QUEUE"),
            node_selector=node_selector,
            tolerations=tuple(tolerations),
            priority_class=text("LIPSYNC_PRIORITY_CLASS"),
            s3_secret=text("LIPSYNC_S3_SECRET"),
            s3_endpoint=text("LIPSYNC_S3_ENDPOINT"),
            active_deadline_seconds=number("LIPSYNC_ACTIVE_DEADLINE_SECONDS", cls.active_deadline_seconds, minimum=1),
            ttl_seconds_after_finished=number("LIPSYNC_TTL_SECONDS_AFTER_FINISHED", cls.ttl_seconds_after_finished),
            backoff_limit=number("LIPSYNC_BACKOFF_LIMIT", cls.backoff_limit),
            runner_cpu=text("LIPSYNC_RUNNER_CPU"),
            runner_memory=text("LIPSYNC_RUNNER_MEMORY"),
            progress_interval=number("LIPSYNC_PROGRESS_INTERVAL", cls.progress_interval, float, minimum=0.1),
            resync_seconds=number("LIPSYNC_RESYNC_SECONDS", cls.resync_seconds, float, minimum=0.1),
            lease_namespace=text("LIPSYNC_LEASE_NAMESPACE"),
            lease_name=text("LIPSYNC_LEASE_NAME", cls.lease_name),
            lease_seconds=number("LIPSYNC_LEASE_SECONDS", cls.lease_seconds, float, minimum=1),
            metrics_port=number("LIPSYNC_METRICS_PORT", cls.metrics_port),
            health_port=number("LIPSYNC_HEALTH_PORT", cls.health_port, minimum=1),
        )

