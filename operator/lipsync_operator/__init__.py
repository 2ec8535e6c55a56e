"""lipsync-operator: a kopf operator that renders LipSyncJobs as batch/v1 Jobs.

Modules, one concern each: ``settings`` (env → one dataclass), ``permissions`` (the RBAC list),
``kube`` (the one door to the API server), ``jobs`` (spec → Job manifest), ``status`` (Job/pod
state → LipSyncJob status), ``queue`` (the GPU budget), ``handlers`` (kopf glue), ``metrics``,
``main`` (the ``lipsync-operator`` console script).
"""
