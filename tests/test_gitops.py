"""examples/gitops: a batch of LipSyncJobs for Argo CD or Flux, and the LipSyncJob health
check each of them needs (Argo CD: Lua; Flux: CEL)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .k8s_helpers import ROOT, cel_eval, have_cel, k8s_validate, yaml_docs
from lipsync.spec import KIND, iter_job_files, load_jobs

GITOPS = ROOT / "examples" / "gitops"
HEALTH_KEY = "resource.customizations.health.lipsync.dev_LipSyncJob"


def _one(path: Path, kind: str) -> dict[str, Any]:
    (doc,) = [d for d in yaml_docs(path) if d.get("kind") == kind]
    return doc


def _kustomization() -> dict[str, Any]:
    return yaml_docs(GITOPS / "kustomization.yaml")[0]


def _job_names() -> list[str]:
    return sorted(j.metadata.name for p in iter_job_files([GITOPS]) for j in load_jobs(p, only_jobs=True))


def test_folder_validates_as_a_batch():
    """`lipsync validate examples/gitops/` sees exactly the three jobs; the Argo CD and Flux
    objects beside them are skipped, not errors."""
    jobs = [j for p in iter_job_files([GITOPS]) for j in load_jobs(p, only_jobs=True)]
    assert len(jobs) == 3
    models = {j.spec.model.name for j in jobs}
    assert {"baseline", "wav2lip"} <= models
    for job in jobs:
        assert job.spec.video.startswith("s3://") and job.spec.audio.startswith("s3://")
        assert job.spec.output.uri.startswith("s3://")
        assert job.metadata.namespace is None  # the kustomization / GitOps tool places them
    assert len({j.spec.output.uri for j in jobs}) == len(jobs)  # no two renders share an output


def test_kustomization_lists_only_the_jobs():
    k = _kustomization()
    assert k["kind"] == "Kustomization" and k["apiVersion"].startswith("kustomize.config.k8s.io/")
    listed = sorted(k["resources"])
    job_files = sorted(p.name for p in GITOPS.glob("*.yaml")
                       if any(d.get("kind") == KIND for d in yaml_docs(p)))
    assert listed == job_files
    for name in listed:  # a job file holds jobs only, so kustomize applies nothing else
        assert {d["kind"] for d in yaml_docs(GITOPS / name)} == {KIND}


def test_argocd_application():
    app = _one(GITOPS / "argocd-application.yaml", "Application")
    assert app["apiVersion"] == "argoproj.io/v1alpha1"
    spec = app["spec"]
    assert spec["source"]["path"] == str(GITOPS.relative_to(ROOT))
    assert spec["destination"]["namespace"] == _kustomization()["namespace"]
    assert "CreateNamespace=true" in spec["syncPolicy"]["syncOptions"]


def test_flux_kustomization():
    ks = _one(GITOPS / "flux-kustomization.yaml", "Kustomization")
    assert ks["apiVersion"] == "kustomize.toolkit.fluxcd.io/v1"
    spec = ks["spec"]
    assert spec["path"].lstrip("./") == str(GITOPS.relative_to(ROOT))
    repo = _one(GITOPS / "flux-kustomization.yaml", "GitRepository")
    assert spec["sourceRef"] == {"kind": "GitRepository", "name": repo["metadata"]["name"]}
    assert spec["targetNamespace"] == _kustomization()["namespace"]
    checks = spec["healthChecks"]
    assert sorted(c["name"] for c in checks) == _job_names()
    for c in checks:
        assert (c["apiVersion"], c["kind"], c["namespace"]) == ("lipsync.dev/v1alpha1", KIND, spec["targetNamespace"])
    (expr,) = spec["healthCheckExprs"]
    assert (expr["apiVersion"], expr["kind"]) == ("lipsync.dev/v1alpha1", KIND)
    assert {"current", "failed"} <= set(expr)


# ------------------------------------------------------------------ health: samples of status
def _obj(conditions=None, generation=1, **status) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "lipsync.dev/v1alpha1", "kind": KIND,
                           "metadata": {"name": "demo", "generation": generation}, "spec": {}}
    if conditions is not None or status:
        obj["status"] = {**status}
        if conditions is not None:
            obj["status"]["conditions"] = [
                {"type": t, "status": s, "reason": r, "message": m} for t, s, r, m in conditions
            ]
    return obj


RUNNING = _obj([("Ready", "False", "Running", "rendering"), ("Reconciling", "True", "Running", "")],
               phase="Running", progress=40, stage="render", observedGeneration=1)
SUCCEEDED = _obj([("Ready", "True", "Succeeded", "output.mp4 published")], phase="Succeeded",
                 progress=100, observedGeneration=1)
FAILED = _obj([("Ready", "False", "NoFaceFound", "no face in video"),
               ("Stalled", "True", "NoFaceFound", "no face in video")], phase="Failed",
              reason="NoFaceFound", observedGeneration=1)
QUEUED = _obj([("Ready", "False", "Queued", "waiting for a GPU")], phase="Queued", observedGeneration=1)
STALE = _obj([("Ready", "True", "Succeeded", "done")], generation=2, phase="Succeeded", observedGeneration=1)
NEW = _obj()
# A spec edit refused while (or after) rendering: the operator has seen generation 2 and says so.
REFUSED = _obj([("Ready", "False", "SpecImmutable", "spec is immutable once rendering started"),
                ("Reconciling", "False", "SpecImmutable", ""),
                ("Stalled", "True", "SpecImmutable", "spec is immutable once rendering started")],
               generation=2, phase="Succeeded", observedGeneration=2)
# The refusal above, just reverted (generation 3) and not yet seen by the operator.
REVERTED = _obj([("Ready", "False", "SpecImmutable", "spec is immutable"),
                 ("Stalled", "True", "SpecImmutable", "spec is immutable")],
                generation=3, phase="Succeeded", observedGeneration=2)

# (sample, Argo CD status, Flux: current, failed)
CASES = {
    "new": (NEW, "Progressing", False, False),
    "queued": (QUEUED, "Progressing", False, False),
    "running": (RUNNING, "Progressing", False, False),
    "succeeded": (SUCCEEDED, "Healthy", True, False),
    "failed": (FAILED, "Degraded", False, True),
    "stale": (STALE, "Progressing", False, False),  # Ready, but for an older generation
    "refused": (REFUSED, "Degraded", False, True),
    "reverted": (REVERTED, "Progressing", False, False),  # Stalled, but for an older generation
}


def test_argocd_cm_carries_health_lua():
    cm = _one(GITOPS / "argocd-cm-health.yaml", "ConfigMap")
    assert (cm["metadata"]["name"], cm["metadata"]["namespace"]) == ("argocd-cm", "argocd")
    assert cm["data"][HEALTH_KEY] == (GITOPS / "health.lua").read_text()
    k8s_validate(cm)


def _lua_health(obj: dict[str, Any]) -> dict[str, str]:
    lua51 = pytest.importorskip("lupa.lua51", reason="lupa runs the Argo CD health check (Lua 5.1, as gopher-lua)")
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    hs = lua.execute((GITOPS / "health.lua").read_text())
    return {"status": hs["status"], "message": hs["message"]}


@pytest.mark.parametrize("case", CASES)
def test_argocd_health_lua(case: str):
    obj, want, *_ = CASES[case]
    hs = _lua_health(obj)
    assert hs["status"] == want, hs
    assert hs["message"]


def test_argocd_health_messages():
    assert _lua_health(RUNNING)["message"] == "Running, 40%, stage render"
    assert _lua_health(FAILED)["message"] == "NoFaceFound: no face in video"
    assert _lua_health(SUCCEEDED)["message"] == "Succeeded: output.mp4 published"
    assert "generation 2" in _lua_health(STALE)["message"]


@pytest.mark.skipif(not have_cel(), reason="cel-expr-python (the CEL runtime) is not installed")
@pytest.mark.parametrize("case", CASES)
def test_flux_health_exprs(case: str):
    obj, _, current, failed = CASES[case]
    (expr,) = _one(GITOPS / "flux-kustomization.yaml", "Kustomization")["spec"]["healthCheckExprs"]
    # Flux binds the object's top-level fields; `status` may be absent on a brand-new object
    variables = {k: obj.get(k, {}) for k in ("apiVersion", "kind", "metadata", "spec", "status")}
    assert cel_eval(expr["current"], variables) is current
    assert cel_eval(expr["failed"], variables) is failed
