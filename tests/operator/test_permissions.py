"""permissions.py: the one RBAC list equals what the code declares, and nothing bypasses the wrapper.

(That every request the running operator makes is allowed by the list is checked by the
``cluster`` fixture after each end-to-end test.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import lipsync_operator
from lipsync_operator import kube, permissions

PACKAGE = Path(lipsync_operator.__file__).parent


def test_rules_are_kopfs_needs_plus_the_wrappers_declarations():
    declared = kube.declared_access()
    own = {(g, r, v) for g, r, v, _ in permissions.OPERATOR_NEEDS + permissions.LEASE_NEEDS}
    assert own == declared, "permissions.OPERATOR_NEEDS + LEASE_NEEDS must equal the @needs declarations in kube.py"
    assert permissions.LEASE_RULES == permissions.merge_rules(permissions.LEASE_NEEDS)
    assert permissions.RULES == permissions.merge_rules(permissions.KOPF_NEEDS + permissions.OPERATOR_NEEDS)


def test_every_kube_method_that_calls_the_api_declares_its_access():
    tree = ast.parse((PACKAGE / "kube.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Kube")
    for fn in cls.body:
        if not isinstance(fn, ast.AsyncFunctionDef) or fn.name.startswith("_"):
            continue
        calls_api = any(isinstance(n, ast.Attribute) and n.attr == "_acall" for n in ast.walk(fn))
        decorated = any(isinstance(d, ast.Call) and getattr(d.func, "id", "") == "needs" for d in fn.decorator_list)
        assert not calls_api or decorated, f"Kube.{fn.name} calls the API without @needs(...)"


def test_only_kube_py_talks_to_the_api_server():
    for path in PACKAGE.glob("*.py"):
        if path.name == "kube.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert not name.startswith(("kubernetes", "aiohttp", "requests", "urllib3", "httpx")), (
                    f"{path.name} imports {name}: API calls go through lipsync_operator.kube")


def test_rule_form_is_what_a_role_takes():
    for rule in permissions.RULES:
        assert set(rule) == {"apiGroups", "resources", "verbs"}
        assert all(isinstance(v, list) and v for v in rule.values())
        assert rule["verbs"] == sorted(set(rule["verbs"]))
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]


def test_allows():
    assert permissions.allows("batch", "jobs", "create")
    assert not permissions.allows("batch", "jobs", "update")
    assert not permissions.allows("", "secrets", "get")
    assert permissions.allows("x", "y", "z", [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}])


def test_every_rule_was_needed_by_the_running_operator():
    """Runs after test_operator.py (alphabetical order); skipped when the e2e tests did not run."""
    import pytest
    from kubesim import OBSERVED

    if not OBSERVED:
        pytest.skip("no end-to-end test ran in this session")
    # Not observable here: the admission plugin's check behind blockOwnerDeletion.
    unobservable = {("lipsync.dev", "lipsyncjobs/finalizers", "update")}
    declared = {(g, r, v) for g, r, v, _ in permissions.KOPF_NEEDS + permissions.OPERATOR_NEEDS + permissions.LEASE_NEEDS}
    assert declared - unobservable <= OBSERVED, f"declared but never used: {declared - unobservable - OBSERVED}"
