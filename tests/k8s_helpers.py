"""Offline stand-ins for what the Kubernetes API server does with a CRD's schema.

* ``structural_errors``: the API server's rules for a *structural* openAPIV3Schema (every node
  typed, no references, no ``anyOf`` carrying types, ...). ``kubernetes-validate`` only checks the
  CRD's own shape; these are the rules that make ``kubectl apply -f crd.yaml`` fail.
* ``admit``: what creating a custom resource goes through: null pruning, defaulting, schema
  validation (unknown fields rejected, as ``kubectl``'s default ``--validate=strict`` does) and the
  ``x-kubernetes-validations`` CEL rules (evaluated with cel-expr-python when it is installed).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
# The Kubernetes minor to validate against: the newest this project was checked with (bump it
# with kubernetes-validate), or the newest an older kubernetes-validate ships. The chart's
# kubeVersion and the CRD's CEL rules (with fieldPath/reason) need >= 1.30.
_CHECKED_WITH = "1.37"
_latest = kubernetes_validate.utils.major_minor(kubernetes_validate.utils.latest_version())
KUBE_VERSION = min(_CHECKED_WITH, _latest, key=lambda v: tuple(map(int, v.split("."))))
assert tuple(map(int, KUBE_VERSION.split("."))) >= (1, 30), f"kubernetes-validate {_latest} is too old"

_SCHEMA_KEYS = {
    "description", "type", "format", "nullable", "enum", "default", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "pattern", "minItems",
    "maxItems", "uniqueItems", "minProperties", "maxProperties", "required", "properties", "items",
    "additionalProperties", "multipleOf", "example", "externalDocs",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string",
    "x-kubernetes-embedded-resource", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type", "x-kubernetes-validations",
}
_TYPES = {"object", "array", "string", "integer", "number", "boolean"}


def k8s_validate(doc: dict[str, Any]) -> None:
    """Validate a built-in resource against Kubernetes' own (strict) schemas."""
    kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def structural_errors(schema: dict[str, Any], path: str = "openAPIV3Schema") -> list[str]:
    """Violations of the API server's structural-schema rules (empty when structural)."""
    errors: list[str] = []
    unknown = set(schema) - _SCHEMA_KEYS
    if unknown:
        errors.append(f"{path}: keys the API server rejects or that make it non-structural: {sorted(unknown)}")
    preserve = schema.get("x-kubernetes-preserve-unknown-fields") or schema.get("x-kubernetes-int-or-string")
    t = schema.get("type")
    if t is None and not preserve:
        errors.append(f"{path}: no type")
    if t is not None and t not in _TYPES:
        errors.append(f"{path}: type {t!r}")
    if "properties" in schema and "additionalProperties" in schema:
        errors.append(f"{path}: properties and additionalProperties are mutually exclusive")
    if schema.get("additionalProperties") is False:
        errors.append(f"{path}: additionalProperties must not be false")
    if "properties" in schema and t != "object":
        errors.append(f"{path}: properties on a non-object")
    if "items" in schema and t != "array":
        errors.append(f"{path}: items on a non-array")
    if t == "array" and "items" not in schema:
        errors.append(f"{path}: array without items")
    if "default" in schema:
        if schema["default"] is None:
            errors.append(f"{path}: default null")
        else:
            try:
                jsonschema.validate(schema["default"], to_jsonschema(schema))
            except jsonschema.ValidationError as e:
                errors.append(f"{path}: default does not validate: {e.message}")
    for name in schema.get("required", []):
        if name not in schema.get("properties", {}):
            errors.append(f"{path}: required {name!r} is not a property")
    for k in ("enum",):
        for v in schema.get(k, []):
            if v is None:
                errors.append(f"{path}: null in enum")
    for rule in schema.get("x-kubernetes-validations", []):
        if set(rule) - {"rule", "message", "messageExpression", "fieldPath", "reason", "optionalOldSelf"}:
            errors.append(f"{path}: unknown keys in a validation rule {sorted(rule)}")
        if rule.get("reason") not in (None, "FieldValueInvalid", "FieldValueForbidden",
                                      "FieldValueRequired", "FieldValueDuplicate"):
            errors.append(f"{path}: reason {rule['reason']!r}")
    if schema.get("x-kubernetes-list-type") == "map":
        item = schema.get("items", {})
        for key in schema.get("x-kubernetes-list-map-keys", []):
            if key not in item.get("required", []):
                errors.append(f"{path}: list-map key {key!r} must be required in the items")
    for name, sub in schema.get("properties", {}).items():
        errors += structural_errors(sub, f"{path}.properties.{name}")
    if isinstance(schema.get("items"), dict):
        errors += structural_errors(schema["items"], f"{path}.items")
    if isinstance(schema.get("additionalProperties"), dict):
        errors += structural_errors(schema["additionalProperties"], f"{path}.additionalProperties")
    return errors


def to_jsonschema(schema: dict[str, Any], *, strict: bool = True) -> dict[str, Any]:
    """An openAPIV3Schema node as plain JSON Schema: nullable as a type union; with ``strict``,
    objects with properties refuse unknown fields (kubectl's default server-side validation)."""
    out: dict[str, Any] = {}
    for k, v in schema.items():
        if k.startswith("x-kubernetes-") or k in ("nullable", "description"):
            continue
        if k == "properties":
            out[k] = {n: to_jsonschema(s, strict=strict) for n, s in v.items()}
        elif k in ("items", "additionalProperties") and isinstance(v, dict):
            out[k] = to_jsonschema(v, strict=strict)
        else:
            out[k] = v
    if schema.get("nullable"):
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if strict and "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
    return out


def prune_nulls_and_default(value: Any, schema: dict[str, Any]) -> Any:
    """The API server's null pruning (non-nullable fields) then defaulting, recursively."""
    if isinstance(value, dict) and "properties" in schema:
        out = {}
        for k, v in value.items():
            sub = schema["properties"].get(k)
            if v is None and sub is not None and not sub.get("nullable"):
                continue
            out[k] = prune_nulls_and_default(v, sub) if sub is not None else v
        for k, sub in schema["properties"].items():
            if k not in out and "default" in sub:
                out[k] = prune_nulls_and_default(copy.deepcopy(sub["default"]), sub)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune_nulls_and_default(v, schema["items"]) for v in value]
    if isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        return {k: prune_nulls_and_default(v, schema["additionalProperties"]) for k, v in value.items()}
    return value


def iter_rules(value: Any, schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict, Any]]:
    """(path, rule, self) for every CEL rule whose node is present in ``value``."""
    for rule in schema.get("x-kubernetes-validations", []):
        yield path, rule, value
    if isinstance(value, dict):
        for k, v in value.items():
            sub = schema.get("properties", {}).get(k) or (
                schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else None)
            if sub is not None:
                yield from iter_rules(v, sub, f"{path}.{k}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            yield from iter_rules(v, schema["items"], f"{path}[{i}]")


def cel_eval(expression: str, variables: dict[str, Any]) -> bool:
    """Evaluate a CEL expression with cel-expr-python (the CEL C++ runtime; callers skip when it
    is missing). Variables are dynamically typed JSON values; the optional-field syntax
    (``a.?b.orValue(x)``) that Flux's health expressions use is enabled."""
    from cel_expr_python import cel
    from cel_expr_python.ext.ext_optional import ExtOptional

    env = cel.NewEnv(variables={k: cel.Type.DYN for k in variables}, extensions=[ExtOptional()])
    result = env.compile(expression).eval(data=variables)
    if result.type() != cel.Type.BOOL:
        raise AssertionError(f"CEL {expression!r} gave {result.type().name()}: {result.value()}")
    return bool(result.value())


def have_cel() -> bool:
    try:
        import cel_expr_python  # noqa: F401
    except ImportError:
        return False
    return True


def admit(doc: dict[str, Any], schema: dict[str, Any], *, cel: bool = True) -> dict[str, Any]:
    """Create ``doc`` as the API server would; returns the stored object or raises AssertionError
    naming the rule or field that refuses it."""
    stored = prune_nulls_and_default(copy.deepcopy(doc), schema)
    try:
        jsonschema.validate(stored, to_jsonschema(schema))
    except jsonschema.ValidationError as e:
        where = ".".join(str(p) for p in e.absolute_path) or "(root)"
        raise AssertionError(f"schema: {where}: {e.message}") from None
    if cel:
        for path, rule, value in iter_rules(stored, schema):
            if not cel_eval(rule["rule"], {"self": value}):
                raise AssertionError(f"CEL {path}{rule.get('fieldPath', '')}: {rule['message']}")
    return stored


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
