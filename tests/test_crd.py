"""The LipSyncJob CRD: generated from the pydantic models, committed, structural, and in step
with pydantic on every example job."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml

from .k8s_helpers import ROOT, admit, have_cel, k8s_validate, structural_errors, yaml_docs
from lipsync.crd import CRD_NAME, RULES, crd_manifest, crd_yaml, openapi_schema
from lipsync.errors import InvalidSpec
from lipsync.spec import KIND, FaceSpec, ModelSpec, load_jobs, parse_job

CRD_FILES = [
    ROOT / "crds" / f"{CRD_NAME}.yaml",
    ROOT / "charts" / "lipsync-operator" / "crds" / f"{CRD_NAME}.yaml",
]
EXAMPLE_FILES = sorted(
    p for p in [*ROOT.glob("examples/*.yaml"), *ROOT.glob("examples/*.yml"),
                *ROOT.glob("examples/gitops/*.yaml")]
    if p.name not in ("kustomization.yaml", "kustomization.yml")
)
SCHEMA = openapi_schema()
_HAVE_CEL = have_cel()  # cel-expr-python evaluates the CEL rules offline
_NEED_CEL = pytest.mark.skipif(not _HAVE_CEL, reason="cel-expr-python (the CEL runtime) is not installed")


def _job(**spec):
    base = {"video": "in.mp4", "audio": "speech.wav", "output": {"uri": "out"}}
    base.update(spec)
    return {"apiVersion": "lipsync.dev/v1alpha1", "kind": KIND, "metadata": {"name": "demo"}, "spec": base}


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_committed_crd_is_current(path: Path):
    assert path.exists(), f"{path.relative_to(ROOT)} is missing: write it with `lipsync crd > {path.relative_to(ROOT)}`"
    # (a trailing newline more or less is fine: `print(crd_yaml())` adds one)
    assert path.read_text().rstrip("\n") == crd_yaml().rstrip("\n"), (
        f"{path.relative_to(ROOT)} is stale: spec.py changed. Regenerate it: "
        f"`lipsync crd > {path.relative_to(ROOT)}` (or python -c 'from lipsync.crd import crd_yaml; "
        "print(crd_yaml(), end=\"\")')"
    )


def test_crd_yaml_is_deterministic_and_round_trips():
    assert crd_yaml() == crd_yaml()
    docs = list(yaml.safe_load_all(crd_yaml()))
    assert docs == [crd_manifest()]


def test_crd_validates_against_kubernetes_schema():
    k8s_validate(crd_manifest())


def test_schema_is_structural():
    assert structural_errors(SCHEMA) == []


def test_crd_shape():
    crd = crd_manifest()
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{spec['names']['plural']}.{spec['group']}"
    assert spec["names"]["kind"] == "LipSyncJob" and "lsj" in spec["names"]["shortNames"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase"
    assert columns["Progress"] == ".status.progress"
    assert columns["Model"] == ".spec.model.name"
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_schema_keeps_descriptions_enums_defaults_and_bounds():
    spec = SCHEMA["properties"]["spec"]
    assert spec["description"] and spec["properties"]["video"]["description"]
    model = spec["properties"]["model"]["properties"]
    assert model["name"]["enum"] == ["baseline", "wav2lip", "command", "latentsync"]
    assert model["name"]["default"] == "baseline"
    assert model["options"]["properties"]["device"]["enum"] == ["auto", "cpu", "cuda"]  # typed, per model by CEL
    assert model["options"]["default"] == {}
    # spec fields are not nullable: an explicit null is pruned (= absent, like pydantic's None)
    # instead of reaching the CEL rules, where size(null) would fail
    assert "nullable" not in model["weights"] and "nullable" not in model["command"]
    assert "batchSize" in model["options"]["description"]  # kubectl explain lists the options
    crf = spec["properties"]["output"]["properties"]["crf"]
    assert (crf["minimum"], crf["maximum"], crf["default"]) == (0, 51, 18)
    assert spec["properties"]["face"]["properties"]["detector"]["enum"] == ["haar", "haar-alt2", "yunet"]
    assert spec["required"] == ["video", "audio", "output"]
    status = SCHEMA["properties"]["status"]["properties"]
    assert status["artifacts"]["additionalProperties"] == {"type": "string"}
    assert status["progress"]["nullable"] is True and status["progress"]["maximum"] == 100
    assert status["conditions"]["x-kubernetes-list-type"] == "map"
    text = crd_yaml()
    assert "$ref" not in text and "$defs" not in text and "anyOf" not in text and "title:" not in text


def test_defaults_match_pydantic():
    """What the API server stores for a minimal job equals pydantic's view of it."""
    doc = _job()
    stored = admit(doc, SCHEMA, cel=False)
    parsed = parse_job(doc).model_dump(by_alias=True, exclude_none=True, mode="json")
    assert stored["spec"] == parsed["spec"]


def _cel_agrees_with_pydantic(model: dict) -> tuple[bool, bool]:
    from .k8s_helpers import cel_eval, prune_nulls_and_default

    schema = SCHEMA["properties"]["spec"]["properties"]["model"]
    value = prune_nulls_and_default(model, schema)
    cel_ok = all(cel_eval(r["rule"], {"self": value}) for r in RULES["ModelSpec"])
    try:
        ModelSpec.model_validate(model)
        py_ok = True
    except Exception:  # noqa: BLE001 - pydantic.ValidationError
        py_ok = False
    return cel_ok, py_ok


@pytest.mark.parametrize(
    "name,weights,command",
    list(itertools.product(
        [None, "baseline", "wav2lip", "command", "latentsync"],
        [None, "", "s3://models/w.pth"],
        [None, [], ["tool", "{video}"]],
    )),
)
@_NEED_CEL
def test_cel_rules_agree_with_pydantic(name, weights, command):
    model = {k: v for k, v in {"name": name, "weights": weights, "command": command}.items() if v is not None}
    cel_ok, py_ok = _cel_agrees_with_pydantic(model)
    if weights == "" and name not in ("wav2lip", "latentsync"):
        # An empty URI is a syntax error that pydantic (the operator) reports; not a CEL rule.
        assert not py_ok
        return
    assert cel_ok == py_ok, f"{model}: CEL says {cel_ok}, pydantic says {py_ok}"


@pytest.mark.parametrize("detector,weights", list(itertools.product([None, "haar", "yunet"], [None, "yunet.onnx"])))
@_NEED_CEL
def test_face_cel_rules_agree_with_pydantic(detector, weights):
    from .k8s_helpers import cel_eval, prune_nulls_and_default

    face = {k: v for k, v in {"detector": detector, "weights": weights}.items() if v is not None}
    value = prune_nulls_and_default(face, SCHEMA["properties"]["spec"]["properties"]["face"])
    cel_ok = all(cel_eval(r["rule"], {"self": value}) for r in RULES["FaceSpec"])
    try:
        FaceSpec.model_validate(face)
        py_ok = True
    except Exception:  # noqa: BLE001 - pydantic.ValidationError
        py_ok = False
    valid = (weights is not None) == (detector == "yunet")  # yunet needs weights; the cascades take none
    assert cel_ok == valid and py_ok == valid


@_NEED_CEL
def test_cel_rule_messages_reach_the_user():
    with pytest.raises(AssertionError, match="need spec.model.weights"):
        admit(_job(model={"name": "wav2lip"}), SCHEMA)
    with pytest.raises(AssertionError, match="needs spec.model.command"):
        admit(_job(model={"name": "command"}), SCHEMA)
    # an explicit null is pruned before the rules run: it reads as absent, as pydantic's None does
    admit(_job(model={"name": "baseline", "weights": None, "command": None}), SCHEMA)


def test_schema_rejects_what_pydantic_rejects():
    bad = [
        _job(face={"paddding": 0.3}),                 # unknown field
        _job(output={"uri": "o", "crf": 52}),         # out of range
        _job(timing={"follow": "both"}),              # not in the enum
        _job(face={"index": -1}),                     # minimum
        _job(output={"crf": 18}),                     # required field missing
    ]
    for doc in bad:
        with pytest.raises(InvalidSpec):
            parse_job(doc)
        with pytest.raises(AssertionError):
            admit(doc, SCHEMA, cel=False)


def test_there_are_examples():
    assert any(p.parent.name == "gitops" for p in EXAMPLE_FILES)


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_example_jobs_validate(path: Path):
    """Every LipSyncJob in examples/ is admitted by the CRD and parsed by pydantic alike."""
    docs = [d for d in yaml_docs(path) if isinstance(d, dict) and d.get("kind") == KIND]
    jobs = load_jobs(path, only_jobs=True)
    assert len(jobs) == len(docs)
    for doc, job in zip(docs, jobs):
        stored = admit(doc, SCHEMA, cel=_HAVE_CEL)
        # the API server's defaults and pydantic's agree on the example too
        assert stored["spec"] == job.model_dump(by_alias=True, exclude_none=True, mode="json")["spec"]


def test_converter_refuses_what_a_crd_cannot_say():
    """A field spec.py may grow later fails in `lipsync crd`, naming the problem."""
    from typing import Any

    from pydantic import BaseModel, Field

    from lipsync.crd import _schema_for

    class Free(BaseModel):
        labels: dict[str, Any] = Field(default_factory=dict, examples=[{"team": "a"}])

    labels = _schema_for(Free, nullable=False)["properties"]["labels"]
    assert labels["x-kubernetes-preserve-unknown-fields"] is True and labels["default"] == {}
    assert labels["example"] == {"team": "a"} and structural_errors(labels) == []

    class Union(BaseModel):
        size: int | str

    with pytest.raises(ValueError, match="structural schema"):
        _schema_for(Union, nullable=False)

    class Tree(BaseModel):
        children: list["Tree"] = []

    with pytest.raises(ValueError, match="refers to itself"):
        _schema_for(Tree, nullable=False)


# spec fields that spec.py gives no description yet (kubectl explain shows nothing for them).
# Shrink this as descriptions are added to the pydantic Fields; it must not grow.
UNDESCRIBED_SPEC_FIELDS: set[str] = set()


def test_kubectl_explain_documents_the_spec():
    missing = set()

    def walk(node: dict, path: str) -> None:
        if not node.get("description"):
            missing.add(path)
        for name, sub in node.get("properties", {}).items():
            walk(sub, f"{path}.{name}")
        if isinstance(node.get("items"), dict) and "properties" in node["items"]:
            walk(node["items"], f"{path}[]")

    walk(SCHEMA["properties"]["spec"], "spec")
    assert SCHEMA.get("description")
    assert missing <= UNDESCRIBED_SPEC_FIELDS, f"add a Field(description=...) in spec.py for {sorted(missing - UNDESCRIBED_SPEC_FIELDS)}"


@pytest.mark.parametrize("model,ok", [
    ({"name": "wav2lip", "weights": "s3://models/w.pth", "options": {"batchSize": 128}}, True),
    ({"name": "wav2lip", "weights": "s3://models/w.pth", "options": {"batchSize": 128, "device": "cpu"}}, True),
    ({"name": "wav2lip", "weights": "s3://models/w.pth", "options": {"batchsize": 128}}, False),
    ({"name": "wav2lip", "weights": "s3://models/w.pth", "options": {"device": "gpu"}}, False),
    ({"name": "wav2lip", "weights": "s3://models/w.pth", "options": {"batchSize": 0}}, False),
    ({"name": "wav2lip", "weights": "s3://models/w.pth", "options": {"gain": 2.0}}, False),
    ({"options": {"gain": 2.0}}, True),
    ({"options": {"gian": 2.0}}, False),
    ({"options": {"gain": "loud"}}, False),
    ({"name": "latentsync", "weights": "s3://models/ls/", "options": {"version": "1.6", "inferenceSteps": 30}}, True),
    ({"name": "latentsync", "weights": "s3://models/ls/", "options": {"version": "2.0"}}, False),
    ({"name": "latentsync", "weights": "s3://models/ls/", "options": {"timeoutSeconds": 60}}, True),
    ({"name": "command", "command": ["t"], "options": {"cropSize": 256, "timeoutSeconds": 5}}, True),
    ({"name": "command", "command": ["t"], "options": {"crop": 256}}, False),
    ({"name": "command", "command": ["t"], "options": {"seed": 3}}, False),
])
@_NEED_CEL
def test_model_options_are_checked_per_model_by_the_api_server(model, ok):
    """A misspelled option (``batchsize``), another model's option or a bad value is refused at
    ``kubectl apply`` (schema, then CEL), as the operator's pydantic check would refuse it."""
    try:
        ModelSpec.model_validate(model)
        py_ok = True
    except Exception:  # noqa: BLE001 - pydantic.ValidationError
        py_ok = False
    assert py_ok == ok, model
    if ok:
        admit(_job(model=model), SCHEMA)
    else:
        with pytest.raises(AssertionError):
            admit(_job(model=model), SCHEMA)


def test_options_are_typed_in_the_crd_and_the_output_uri_fits_a_termination_message():
    """Typed properties, not preserved unknown fields: CEL on a real API server cannot see
    preserved unknown fields, so rules over them would pass everything."""
    options = SCHEMA["properties"]["spec"]["properties"]["model"]["properties"]["options"]
    assert "x-kubernetes-preserve-unknown-fields" not in options
    assert {"gain", "batchSize", "device", "cropSize", "version", "timeoutSeconds"} <= set(options["properties"])
    assert SCHEMA["properties"]["spec"]["properties"]["output"]["properties"]["uri"]["maxLength"] == 512
