"""What a LipSyncJob may ask for in a cluster, where its author is not trusted.

On a laptop the CLI's user owns the machine: any path, any program. In a cluster a LipSyncJob's
author is one of many teams, so the operator (before it makes a Job) and the runner (in its
in-cluster mode, ``LIPSYNC_IN_CLUSTER=1``, which the operator's Job sets) both apply
:func:`check` with the same :class:`ClusterPolicy`:

* **locations**: inputs are ``s3://`` or ``https://``, the output is ``s3://``; a local path,
  ``file://`` (the container's own files), or ``http://`` (plain text, and a probe of internal
  addresses through status messages) is refused with ``InvalidSpec``. (``.``/``..`` segments are
  refused in every URI by the schema itself, in and out of a cluster.)
* **outputs**: with ``LIPSYNC_OUTPUT_PREFIX`` set on the operator (e.g.
  ``s3://renders/{namespace}/``), a job's ``output.uri`` must lie under its namespace's prefix
  (``NotAllowed`` otherwise), so no field of a job in one namespace (``overwrite: true``
  included) reaches another namespace's renders. The runner gets the filled-in prefix as
  ``LIPSYNC_OUTPUT_PREFIX``.
* **programs**: a ``command`` model runs a program the author chose; it is refused unless the
  operator's ``LIPSYNC_COMMAND_POLICY`` allows that program in that namespace (reason
  ``NotAllowed``). The allowed programs reach the runner as ``LIPSYNC_ALLOW_COMMANDS``.

Failures raise :class:`~lipsync.errors.LipSyncError` subclasses whose message names the field
and what to do.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Mapping

from .errors import InvalidSpec, NotAllowed
from .spec import LipSyncJobSpec

IN_CLUSTER_ENV = "LIPSYNC_IN_CLUSTER"
ALLOW_COMMANDS_ENV = "LIPSYNC_ALLOW_COMMANDS"
OUTPUT_PREFIX_ENV = "LIPSYNC_OUTPUT_PREFIX"
ANY = "*"
# Models that run a program the job's author chose (latentsync runs the image's own program).
PROGRAM_MODELS = frozenset({"command"})


@dataclass(frozen=True)
class ClusterPolicy:
    """``commands``: programs (``argv[0]``, exactly) a command model may run; ``("*",)`` any; () none.
    ``output_prefix``: the URI prefix every output must lie under (None: anywhere)."""

    commands: tuple[str, ...] = ()
    output_prefix: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ClusterPolicy":
        """The runner's copy, from the variables the operator's Job sets."""
        env = os.environ if env is None else env
        raw = env.get(ALLOW_COMMANDS_ENV, "").strip()
        commands: tuple[str, ...] = ()
        if raw:
            try:
                value = json.loads(raw)
            except ValueError:
                raise InvalidSpec(f"{ALLOW_COMMANDS_ENV} is not a JSON list of programs", stage="validate") from None
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise InvalidSpec(f"{ALLOW_COMMANDS_ENV} must be a JSON list of strings", stage="validate")
            commands = tuple(value)
        return cls(commands=commands, output_prefix=env.get(OUTPUT_PREFIX_ENV, "").strip() or None)

    def env(self) -> dict[str, str]:
        """The variables that carry this policy to the runner."""
        out = {ALLOW_COMMANDS_ENV: json.dumps(list(self.commands))}
        if self.output_prefix:
            out[OUTPUT_PREFIX_ENV] = self.output_prefix
        return out


def under_prefix(uri: str, prefix: str) -> bool:
    """Whether ``uri`` is ``prefix`` or lies below it, segment-wise (``s3://r/team-a`` does not
    cover ``s3://r/team-ab``). URIs with '.'/'..' segments never reach here (the schema refuses them)."""
    base = prefix.rstrip("/")
    return uri.rstrip("/") == base or uri.startswith(base + "/")


def in_cluster(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return env.get(IN_CLUSTER_ENV, "").strip().lower() in ("1", "true", "yes")


INPUT_SCHEMES = ("s3://", "https://")
OUTPUT_SCHEMES = ("s3://",)


def check(spec: LipSyncJobSpec, policy: ClusterPolicy, *, namespace: str | None = None) -> None:
    """Raise InvalidSpec or NotAllowed if ``spec`` asks for more than a cluster job may."""
    fields = [("spec.video", spec.video, INPUT_SCHEMES), ("spec.audio", spec.audio, INPUT_SCHEMES),
              ("spec.output.uri", spec.output.uri, OUTPUT_SCHEMES)]
    if spec.model.weights:
        fields.append(("spec.model.weights", spec.model.weights, INPUT_SCHEMES))
    for field, uri, schemes in fields:
        if not uri.lower().startswith(schemes):
            kinds = " or ".join(f"an {s}... URI" if s.startswith("https") else f"an {s}bucket/key URI" for s in schemes)
            raise InvalidSpec(
                f"{field} {uri!r}: in a cluster it must be {kinds}; local paths, file:// and http:// are "
                "refused (they name the pod's own files, vanish with it, or reach internal addresses)",
                stage="validate")
    if policy.output_prefix and not under_prefix(spec.output.uri, policy.output_prefix):
        where = f"namespace {namespace!r}" if namespace else "this job"
        raise NotAllowed(
            f"spec.output.uri {spec.output.uri!r} is outside {policy.output_prefix!r}, where outputs of {where} "
            f"must go: write under {policy.output_prefix.rstrip('/')}/", stage="validate")
    model = spec.model
    if model.name in PROGRAM_MODELS:
        program = (model.command or [""])[0]
        where = f"namespace {namespace!r}" if namespace else "this cluster"
        if not policy.commands:
            raise NotAllowed(
                f"spec.model.name: {model.name!r} runs a program of the job's choosing, which the operator does not "
                f"allow in {where}: use a built-in model (baseline, wav2lip, latentsync), or ask the cluster admin to "
                f"allow it (the chart's runner.commandPolicy)", stage="validate")
        if ANY not in policy.commands and program not in policy.commands:
            raise NotAllowed(
                f"spec.model.command[0]: the program {program!r} is not among those the operator allows in {where} "
                f"({', '.join(policy.commands)}): use one of them", stage="validate")
