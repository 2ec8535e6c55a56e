"""The runner never imports kubernetes: it runs in pods with no API access and on laptops."""

from __future__ import annotations

import ast
from pathlib import Path

RUNNER = Path(__file__).resolve().parents[1] / "runner" / "lipsync"
FORBIDDEN = {"kubernetes", "kopf", "lipsync_operator"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_runner_never_imports_kubernetes():
    files = sorted(RUNNER.rglob("*.py"))
    assert len(files) > 20
    offenders = {str(f.relative_to(RUNNER)): imported_roots(f) & FORBIDDEN for f in files}
    assert not {k: v for k, v in offenders.items() if v}
