"""The LipSyncJob CustomResourceDefinition, generated from the pydantic models in ``spec.py``.

``crd_manifest()`` turns pydantic's JSON Schema into a Kubernetes *structural* schema:

* ``$ref``/``$defs`` are inlined (the API server accepts no references);
* ``anyOf: [X, {type: null}]`` (an ``X | None`` field) becomes ``X``. Under ``status`` it gets
  ``nullable: true`` (the operator may write an explicit null), except an enum (the API server
  would check the null against the enum and reject it). Under ``spec`` it stays
  non-nullable on purpose: the API server then *prunes* an explicit ``null`` before validation
  and defaulting, so ``weights: null`` reads as "absent" exactly as pydantic's ``None`` does, and
  the CEL rules below can test presence with ``has()`` (a kept null would make ``size()`` fail);
* ``const`` becomes a one-value ``enum``; ``title`` and ``additionalProperties: false`` go (the API
  server prunes unknown fields, and rejects them under kubectl's default strict field validation);
* a ``default_factory`` field gets its default (pydantic's JSON Schema leaves it out): ``{}`` for
  ``model``, ``face``, ``timing`` (the API server then fills in the inner defaults, as pydantic
  does) and for ``options``;
* ``x-kubernetes-validations`` (CEL) carry the cross-field rules of ``ModelSpec`` that can be
  checked at admission. Per-model ``options`` (a free-form map) and URI syntax are left to
  pydantic: ``lipsync validate`` before applying, and the operator, which fails such a job with
  reason ``InvalidSpec``.

``crd_yaml()`` is the deterministic YAML that ``lipsync crd`` prints and that
``crds/lipsyncjobs.lipsync.dev.yaml`` (and the Helm chart's copy) must equal.
"""

from __future__ import annotations

import copy
from typing import Any, get_args

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .spec import (
    API_GROUP,
    KIND,
    MODEL_OPTIONS,
    PLURAL,
    WEIGHTED_MODELS,
    LipSyncJobSpec,
    LipSyncJobStatus,
)

VERSION = "v1alpha1"
CRD_NAME = f"{PLURAL}.{API_GROUP}"
SHORT_NAMES = ["lsj"]
# `kubectl get all` lists LipSyncJobs next to the Jobs and Pods they create; `kubectl get lipsync`
# lists only them.
CATEGORIES = ["all", "lipsync"]

_KIND_DESCRIPTION = (
    "LipSyncJob renders one lip-synced video: the mouth in a talking-head video is re-animated to "
    "follow a speech track. The operator runs it as a batch/v1 Job and reports progress in status."
)
# Used when the pydantic model has no docstring of its own.
_FALLBACK_DESCRIPTIONS = {
    "LipSyncJobSpec": "What to render: the inputs, the model, which face, the timing and where the output goes.",
    "ModelSpec": "The lip-sync model and its weights and options.",
    "FaceSpec": "Which face in the video is re-animated, and how it is found.",
    "TimingSpec": "What decides the output's length when video and speech differ.",
    "OutputSpec": "Where and how the artifacts (output.mp4, preview.jpg, track.json, metrics.json, run.log) are written.",
    "Condition": "A kstatus condition: Ready, Stalled or Reconciling.",
}


def _model_rules() -> list[dict[str, str]]:
    weighted = ", ".join(f"'{m}'" for m in sorted(WEIGHTED_MODELS))
    return [
        {
            "rule": f"!has(self.name) || !(self.name in [{weighted}]) "
            "|| (has(self.weights) && size(self.weights) > 0)",
            "message": f"models {', '.join(sorted(WEIGHTED_MODELS))} need spec.model.weights "
            "(a local path, an https:// URL or an s3://bucket/key URI)",
            "fieldPath": ".weights",
            "reason": "FieldValueRequired",
        },
        {
            "rule": "!has(self.name) || self.name != 'command' "
            "|| (has(self.command) && size(self.command) > 0)",
            "message": "model 'command' needs spec.model.command, a list of arguments",
            "fieldPath": ".command",
            "reason": "FieldValueRequired",
        },
        {
            "rule": "(has(self.name) && self.name == 'command') "
            "|| !has(self.command) || size(self.command) == 0",
            "message": "spec.model.command is only for name: command",
            "fieldPath": ".command",
            "reason": "FieldValueForbidden",
        },
    ]


def _face_rules() -> list[dict[str, str]]:
    return [
        {
            "rule": "!has(self.detector) || self.detector != 'yunet' || (has(self.weights) && size(self.weights) > 0)",
            "message": "face detector 'yunet' needs spec.face.weights, the YuNet ONNX file",
            "fieldPath": ".weights",
            "reason": "FieldValueRequired",
        },
        {
            "rule": "(has(self.detector) && self.detector == 'yunet') || !has(self.weights)",
            "message": "spec.face.weights is only for detector: yunet",
            "fieldPath": ".weights",
            "reason": "FieldValueForbidden",
        },
    ]


def _option_keys(model: str) -> list[str]:
    return sorted(info.alias or f for f, info in MODEL_OPTIONS[model].model_fields.items())


def _option_rules() -> list[dict[str, str]]:
    """Per model: no option of another model. (``options`` is typed in the schema as the union of
    every model's options, so the API server refuses unknown names and checks types, enums and
    bounds; these rules say which of the known names each model takes.)"""
    every = sorted({k for m in MODEL_OPTIONS for k in _option_keys(m)})
    rules = []
    for model in MODEL_OPTIONS:
        own = _option_keys(model)
        foreign = [k for k in every if k not in own]
        if not foreign:
            continue
        absent = " || ".join(f"has(self.options.{k})" for k in foreign)
        rules.append({
            "rule": f"(has(self.name) ? self.name : 'baseline') != '{model}' || !has(self.options) || !({absent})",
            "message": f"an option model {model!r} does not take: its options are {', '.join(own) or '(none)'}",
            "fieldPath": ".options",
            "reason": "FieldValueForbidden",
        })
    return rules


def _options_schema(description: str) -> dict[str, Any]:
    """``spec.model.options`` for the CRD: one object whose properties are every model's options,
    each with its own type, enum and bounds (no defaults: they differ per model and the runner
    applies them)."""
    props: dict[str, Any] = {}
    for model, options in MODEL_OPTIONS.items():
        for key, node in _schema_for(options, nullable=False).get("properties", {}).items():
            node = {k: v for k, v in node.items() if k != "default"}
            text = f"{model}: {node.get('description', '')}".strip()
            if key in props:
                old = {k: v for k, v in props[key].items() if k != "description"}
                if old != {k: v for k, v in node.items() if k != "description"}:
                    raise ValueError(f"option {key!r} has different types in two models: rename one")
                text = f"{props[key]['description']} {text}"
            props[key] = {**node, "description": text}
    return {"type": "object", "description": description, "default": {}, "properties": props}


# CEL rules by pydantic model (JSON Schema $defs) name. Keep them in step with the model
# validators in spec.py; tests/test_crd.py evaluates each rule against pydantic on samples.
RULES: dict[str, list[dict[str, str]]] = {"ModelSpec": _model_rules() + _option_rules(), "FaceSpec": _face_rules()}


def _options_help() -> str:
    """A line per model listing its options, for `kubectl explain lipsyncjob.spec.model.options`."""
    parts = []
    for name, model in MODEL_OPTIONS.items():
        fields = []
        for fname, info in model.model_fields.items():
            alias = info.alias or fname
            default = info.get_default(call_default_factory=True)
            fields.append(f"{alias}={default}" if default is not None else alias)
        parts.append(f"{name}: {', '.join(fields)}")
    return " Options by model (name=default): " + "; ".join(parts) + "."


# What a CRD schema node may hold (apiextensions.k8s.io/v1 JSONSchemaProps, less the keywords a
# structural schema forbids): anything else pydantic emits is refused by name, so a new kind of
# field in spec.py fails here, not at `kubectl apply`.
_ALLOWED_KEYS = frozenset({
    "description", "type", "format", "nullable", "enum", "default", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minLength", "maxLength", "pattern",
    "minItems", "maxItems", "uniqueItems", "minProperties", "maxProperties", "required",
    "properties", "items", "additionalProperties", "example",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string",
    "x-kubernetes-embedded-resource", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type", "x-kubernetes-validations",
})


class _Converter:
    def __init__(self, defs: dict[str, Any], models: dict[str, type[BaseModel]], *, nullable: bool) -> None:
        self.defs = defs
        self.models = models
        self.nullable = nullable
        self._stack: list[str] = []

    def convert(self, node: dict[str, Any], def_name: str | None = None) -> dict[str, Any]:
        node = dict(node)
        if "$ref" in node:
            ref_name = node.pop("$ref").split("/")[-1]
            if ref_name in self._stack:
                raise ValueError(f"{ref_name} refers to itself: a structural schema cannot recurse")
            self._stack.append(ref_name)
            target = self.convert(self.defs[ref_name], ref_name)
            self._stack.pop()
            # Keys next to the $ref (the field's description, default) override the model's.
            return {**target, **self._convert_keys(node)}
        any_of = node.pop("anyOf", None)
        if any_of is not None:
            others = [s for s in any_of if s.get("type") != "null"]
            if len(others) != 1 or len(others) == len(any_of):
                raise ValueError(f"cannot express {any_of!r} in a structural schema")
            inner = self.convert(others[0])
            outer = self._convert_keys(node)
            if outer.get("default", ...) is None:
                outer.pop("default")
            merged = {**inner, **outer}
            # An enum field is never nullable: the API server checks a null against the enum and
            # rejects it; left non-nullable, an explicit null is pruned (reads as absent) instead.
            if self.nullable and "enum" not in merged:
                merged["nullable"] = True
            return merged
        out = self._convert_keys(node)
        model = self.models.get(def_name) if def_name else None
        if model is not None and "properties" in out:
            for fname, info in model.model_fields.items():
                prop = out["properties"].get(info.alias or fname)
                if prop is not None and info.default_factory is not None and "default" not in prop:
                    prop["default"] = _factory_default(info)
        if def_name is not None:
            description = out.get("description") or _FALLBACK_DESCRIPTIONS.get(def_name)
            if description:
                out["description"] = description
            if def_name in RULES:
                out["x-kubernetes-validations"] = copy.deepcopy(RULES[def_name])
        return out

    def _convert_keys(self, node: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in ("title", "$defs"):
                continue
            if key == "const":
                out["enum"] = [value]
            elif key == "examples":
                if value:
                    out["example"] = value[0]
            elif key == "properties":
                out["properties"] = {k: self.convert(v) for k, v in value.items()}
            elif key == "items":
                out["items"] = self.convert(value)
            elif key == "additionalProperties":
                if isinstance(value, dict):
                    out["additionalProperties"] = self.convert(value)
                elif value is True:  # a free-form map: keep whatever it holds
                    out["x-kubernetes-preserve-unknown-fields"] = True
                # False: the API server prunes unknown fields (kubectl's strict validation refuses them).
            elif key in _ALLOWED_KEYS:
                out[key] = value
            else:
                raise ValueError(f"JSON Schema keyword {key!r} has no place in a CRD schema ({node!r})")
        return out


def _order(node: Any) -> Any:
    """Put each schema's keys in a fixed, readable order (type first, children last)."""
    if isinstance(node, list):
        return [_order(v) for v in node]
    if not isinstance(node, dict):
        return node
    first = ["description", "type", "format", "nullable", "enum", "default",
             "minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems"]
    last = ["required", "properties", "items", "additionalProperties", "x-kubernetes-validations"]
    keys = [k for k in first if k in node]
    keys += sorted(k for k in node if k not in first and k not in last)
    keys += [k for k in last if k in node]
    out = {}
    for k in keys:
        # property names, enum values and defaults are data, not schema: keep them as they are
        if k == "properties":
            out[k] = {name: _order(v) for name, v in node[k].items()}
        elif k in ("enum", "default", "required", "x-kubernetes-validations"):
            out[k] = node[k]
        else:
            out[k] = _order(node[k])
    return out


def _model_classes(root: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every pydantic model reachable from ``root``'s fields, by class name (the $defs keys)."""
    found: dict[str, type[BaseModel]] = {}

    def visit(tp: Any) -> None:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if tp.__name__ in found:
                return
            found[tp.__name__] = tp
            for info in tp.model_fields.values():
                visit(info.annotation)
        for arg in get_args(tp):
            visit(arg)

    visit(root)
    return found


def _factory_default(info: FieldInfo) -> Any:
    """The JSON default of a ``default_factory`` field, which pydantic's JSON Schema leaves out.

    A nested model becomes ``{}``: the API server then applies the inner defaults as well, as
    pydantic does, so ``kubectl get -o yaml`` shows the settings the job will run with.
    """
    value = info.default_factory()  # type: ignore[misc,call-arg]
    if isinstance(value, BaseModel):
        return {}
    return value


def _schema_for(model: type[BaseModel], *, nullable: bool) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    conv = _Converter(raw.get("$defs", {}), _model_classes(model), nullable=nullable)
    return conv.convert(raw, model.__name__)


def openapi_schema() -> dict[str, Any]:
    """The openAPIV3Schema of LipSyncJob (structural; inlined, no references)."""
    spec = _schema_for(LipSyncJobSpec, nullable=False)
    model = spec["properties"]["model"]
    model["properties"]["options"] = _options_schema(
        model["properties"]["options"].get("description", "") + _options_help())
    status = _schema_for(LipSyncJobStatus, nullable=True)
    conditions = status["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    schema = {
        "description": _KIND_DESCRIPTION,
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    return _order(schema)


PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase",
     "description": "Pending, Queued, Running, Succeeded or Failed."},
    {"name": "Progress", "type": "integer", "jsonPath": ".status.progress",
     "description": "Percent of frames rendered."},
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.name",
     "description": "The lip-sync model."},
    {"name": "Stage", "type": "string", "jsonPath": ".status.stage", "priority": 1,
     "description": "The pipeline stage running now."},
    {"name": "Pods", "type": "integer", "jsonPath": ".spec.parallelism", "priority": 1,
     "description": "spec.parallelism: pods rendering at once."},
    {"name": "Indices", "type": "integer", "jsonPath": ".status.indices.done", "priority": 1,
     "description": "Indices (pods of the Indexed Job) that have rendered their share."},
    {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1,
     "description": "Why the job failed (a reason code)."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def crd_manifest() -> dict[str, Any]:
    """The CustomResourceDefinition for LipSyncJob, as a dict."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/name": "lipsync-operator", "app.kubernetes.io/part-of": "lipsync"},
        },
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": list(SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": copy.deepcopy(PRINTER_COLUMNS),
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


_HEADER = (
    "# Generated by `lipsync crd` from runner/lipsync/spec.py (runner/lipsync/crd.py): do not edit.\n"
    "# Regenerate: lipsync crd > crds/lipsyncjobs.lipsync.dev.yaml\n"
    "#   and copy it to charts/lipsync-operator/crds/ (tests/test_crd.py checks both).\n"
)


class _Dumper(yaml.SafeDumper):
    """Block style, no aliases, multi-line strings as literal blocks."""

    def ignore_aliases(self, data: Any) -> bool:  # noqa: ARG002
        return True


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def crd_yaml() -> str:
    """The CRD as YAML: deterministic (same models, same bytes), with a do-not-edit header."""
    body = yaml.dump(
        crd_manifest(), Dumper=_Dumper, sort_keys=False, default_flow_style=False,
        width=100, allow_unicode=True,
    )
    return _HEADER + "---\n" + body
