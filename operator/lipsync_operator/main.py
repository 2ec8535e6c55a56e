"""``lipsync-operator``: run kopf with the handlers, the way the Helm chart deploys it.

* ``--standalone``: one replica, no peering (no kopfpeerings CRD, no RBAC for it);
* ``--all-namespaces``: LipSyncJobs in any namespace (hence a ClusterRole);
* ``--log-format=json``: one JSON object per log line;
* ``--liveness=http://0.0.0.0:8080/healthz``: the pod's liveness probe.

Extra arguments are passed on to ``kopf run`` (e.g. ``--verbose``).
"""

from __future__ import annotations

import sys

LIVENESS = "http://0.0.0.0:8080/healthz"


def kopf_args(extra: list[str] | None = None) -> list[str]:
    return [
        "run", "--standalone", "--all-namespaces", "--log-format=json", f"--liveness={LIVENESS}",
        "-m", "lipsync_operator.handlers", *(extra or []),
    ]


def main(argv: list[str] | None = None) -> None:
    from kopf.cli import main as kopf_main

    from .settings import Settings, SettingsError

    try:
        Settings.from_env()  # fail fast, naming the variable, before kopf starts
    except SettingsError as e:
        print(f"lipsync-operator: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    kopf_main(args=kopf_args(sys.argv[1:] if argv is None else argv), prog_name="lipsync-operator")


if __name__ == "__main__":  # pragma: no cover
    main()
