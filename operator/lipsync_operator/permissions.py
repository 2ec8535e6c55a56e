"""The RBAC rules the operator needs: ONE list, in Kubernetes Role-rule form.

``RULES`` is what the Helm chart's Role in each job namespace grants (``runner.jobNamespaces``;
the chart's test compares against it). Nothing is granted cluster-wide (``CLUSTER_RULES`` is
empty): the operator runs kopf with ``--namespace`` for each job namespace, so every request it
makes names one of them (the end-to-end tests check that too). It is the union of two declared
sources, and ``tests/operator/test_permissions.py`` proves all three agree:

* ``OPERATOR_NEEDS``: the operator's own API calls. Every one of them goes through
  :mod:`lipsync_operator.kube`, whose methods each declare the (group, resource, verb) they use;
  a test checks that this list equals those declarations and that no other module talks to the
  API server.
* ``LEASE_NEEDS`` (``LEASE_RULES``): the leader-election Lease, in the operator's own namespace
  only (a separate Role there): also declared through :mod:`lipsync_operator.kube`.
* ``KOPF_NEEDS``: what kopf itself calls, run as ``lipsync-operator`` runs it: ``--standalone``
  (no peering, so no ``kopfpeerings`` / ``clusterkopfpeerings``), ``--namespace`` per job
  namespace (listed by name: no namespace listing), and
  ``settings.scanning.disabled = True`` (no watching of ``customresourcedefinitions`` or
  ``namespaces``: the resources are discovered once at startup through the discovery endpoints
  ``/api``, ``/apis``, which every authenticated user may read via ``system:discovery``).

The integration tests record every request the operator (kopf included) makes to the emulated API
server and check each one against ``RULES``, so a call that is not declared here fails a test.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

# (apiGroup, resource, verb, why)
KOPF_NEEDS: tuple[tuple[str, str, str, str], ...] = (
    ("lipsync.dev", "lipsyncjobs", "list", "kopf lists the resources it serves before watching"),
    ("lipsync.dev", "lipsyncjobs", "watch", "kopf's watch stream drives every LipSyncJob handler"),
    ("lipsync.dev", "lipsyncjobs", "patch",
     "kopf merge-patches its finalizer and its annotations (handler progress, last-handled spec)"),
    ("batch", "jobs", "list", "kopf lists Jobs for the owned-Job index and event handler"),
    ("batch", "jobs", "watch", "kopf watches Jobs for the owned-Job index and event handler"),
    ("", "events", "create", "kopf.event posts a Kubernetes Event on each phase transition"),
)

# The operator's own calls: must equal lipsync_operator.kube.declared_access() (tested).
OPERATOR_NEEDS: tuple[tuple[str, str, str, str], ...] = (
    ("lipsync.dev", "lipsyncjobs/status", "patch", "all status writes go through the subresource"),
    ("batch", "jobs", "create", "start the rendering Job"),
    ("lipsync.dev", "lipsyncjobs/finalizers", "update",
     "the Job's ownerReference sets blockOwnerDeletion, which the OwnerReferencesPermissionEnforcement "
     "admission plugin (on in OpenShift) allows only with update on the owner's finalizers"),
    ("batch", "jobs", "get", "adopt an existing Job after a 409 (operator restart)"),
    ("batch", "jobs", "delete", "delete the Job when its LipSyncJob is deleted"),
    ("", "pods", "list", "find a Job's pods: progress (log tail), termination message, evictions"),
    ("", "pods/log", "get", "tail the runner's JSON log for its last progress line"),
)


def merge_rules(needs: Iterable[tuple[str, ...]]) -> list[dict[str, list[str]]]:
    """One Role rule per (apiGroup, resource), verbs sorted; rules sorted for stable output."""
    verbs: dict[tuple[str, str], set[str]] = defaultdict(set)
    for group, resource, verb, *_ in needs:
        verbs[group, resource].add(verb)
    return [
        {"apiGroups": [group], "resources": [resource], "verbs": sorted(vs)}
        for (group, resource), vs in sorted(verbs.items())
    ]


RULES: list[dict[str, list[str]]] = merge_rules(KOPF_NEEDS + OPERATOR_NEEDS)

# Leader election (leader.py): the Lease in the operator's own namespace (the chart's release
# namespace, LIPSYNC_LEASE_NAMESPACE), granted there by a Role of its own, nowhere else.
LEASE_NEEDS: tuple[tuple[str, str, str, str], ...] = (
    ("coordination.k8s.io", "leases", "get", "read the leader-election Lease"),
    ("coordination.k8s.io", "leases", "create", "create the Lease when no replica has yet"),
    ("coordination.k8s.io", "leases", "patch", "renew it, or take it over once it has expired"),
)
LEASE_RULES: list[dict[str, list[str]]] = merge_rules(LEASE_NEEDS)
# Granted cluster-wide (a ClusterRole): nothing. A LipSyncJob outside the job namespaces is never seen.
CLUSTER_RULES: list[dict[str, list[str]]] = []


def allows(group: str, resource: str, verb: str, rules: Iterable[dict] = RULES) -> bool:
    """Whether the rules grant ``verb`` on ``group/resource`` (with ``*`` wildcards honoured)."""
    for rule in rules:
        if (
            (group in rule.get("apiGroups", []) or "*" in rule.get("apiGroups", []))
            and (resource in rule.get("resources", []) or "*" in rule.get("resources", []))
            and (verb in rule.get("verbs", []) or "*" in rule.get("verbs", []))
        ):
            return True
    return False


__all__ = ["CLUSTER_RULES", "KOPF_NEEDS", "LEASE_NEEDS", "LEASE_RULES", "OPERATOR_NEEDS", "RULES", "allows",
           "merge_rules"]
