"""``lipsync-operator``: run kopf with the handlers, the way the Helm chart deploys it.

* ``--standalone``: no kopf peering (no kopfpeerings CRD, no RBAC for it); several replicas
  elect a leader through a Lease instead (``leader.py``), and only the leader acts;
* ``--namespace=NS`` for each of ``LIPSYNC_JOB_NAMESPACES``: the operator watches, and acts, in
  those namespaces only (a Role in each, nothing cluster-wide); a LipSyncJob anywhere else is
  never seen, so it gets no Job and no status. Without the variable (development):
  ``--all-namespaces`` (which needs a ClusterRole);
* ``--log-format=json``: one JSON object per log line;
* ``--liveness=http://0.0.0.0:$LIPSYNC_HEALTH_PORT/healthz`` (8080): the pod's probes.

Extra arguments are passed on to ``kopf run`` (e.g. ``--verbose``).
"""

from __future__ import annotations

import sys

from .settings import Settings


def kopf_args(extra: list[str] | None = None, settings: Settings | None = None) -> list[str]:
    """``kopf run``'s arguments for ``settings`` (default: from the environment)."""
    settings = settings or Settings.from_env()
    liveness = f"http://0.0.0.0:{settings.health_port}/healthz"
    scope = [f"--namespace={ns}" for ns in settings.job_namespaces] or ["--all-namespaces"]
    return [
        "run", "--standalone", *scope, "--log-format=json", f"--liveness={liveness}",
        "-m", "lipsync_operator.handlers", *(extra or []),
    ]


def main(argv: list[str] | None = None) -> None:
    from kopf.cli import main as kopf_main

    from .settings import SettingsError

    try:
        settings = Settings.from_env()  # fail fast, naming the variable, before kopf starts
    except SettingsError as e:
        print(f"lipsync-operator: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    kopf_main(args=kopf_args(sys.argv[1:] if argv is None else argv, settings), prog_name="lipsync-operator")


if __name__ == "__main__":  # pragma: no cover
    main()
