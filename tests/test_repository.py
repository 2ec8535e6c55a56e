"""The repository stands on its own: what CI runs is what the README says, and no test or
benchmark reads a path outside the repository (a fresh clone has nothing beside it)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_command(heading: str) -> str:
    readme = (ROOT / "README.md").read_text()
    after = readme[readme.index(heading):]
    block = re.search(r"```sh\n(.*?)\n```", after, re.S)
    assert block, f"no sh block after {heading!r}"
    return block.group(1).strip()


def test_ci_runs_exactly_the_readme_test_command() -> None:
    command = _readme_command("**Run the tests**")
    assert command == "bash .ci/setup && .venv/bin/python -m pytest -q"
    lines = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines[-1] == command, "the last command of .ci/run must be the README's test command"
    assert lines[:-1] == ["set -euo pipefail", 'cd "$(dirname "$0")/.."'], "and nothing else may run"


def test_readme_names_the_fast_subset_that_exists() -> None:
    readme = (ROOT / "README.md").read_text()
    first_screen = readme[: readme.index("## How a job flows")]
    assert '-m "not slow"' in first_screen
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'markers = \[[^\]]*"slow:', pyproject), "the slow marker is registered"


def test_nothing_reads_beside_the_repository() -> None:
    # What reaching beside the repository looks like in code: a named outside folder, or a walk up
    # from __file__ past the repository root. Deliberately bad URIs such as "s3://b/x/../y" in the
    # security tests are data, not paths this suite reads.
    named = re.compile(r"""(/work/|["']shared["']|Path\(["']\.\.)""")
    walk = re.compile(r"__file__\)(?:\.resolve\(\))?((?:\.parent\b|\.parents\[\d+\])+)")
    offenders = []
    for folder in ("tests", "benchmarks"):
        for path in sorted(p for p in (ROOT / folder).rglob("*.py") if p != Path(__file__).resolve()):
            depth = len(path.relative_to(ROOT).parts)  # parents[depth - 1] is the repository root
            for n, line in enumerate(path.read_text().splitlines(), 1):
                up = [sum(int(k) + 1 if k else 1 for k in re.findall(r"\.parents?(?:\[(\d+)\])?", m.group(1)))
                      for m in walk.finditer(line)]
                if named.search(line) or any(u > depth for u in up):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []
    reference = ROOT / "tests" / "data" / "wav2lip-reference"
    assert sorted(p.name for p in reference.iterdir()) == [
        "README.md", "audio_16k.npy", "manifest.json", "mel_reference.npy",
        "wav2lip_face_input.npy", "wav2lip_out_reference.npy"]


def test_documents_link_to_files_that_exist() -> None:
    documents = [ROOT / "README.md", ROOT / "operator" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for doc in documents:
        text = doc.read_text()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" not in target and not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
        for name in re.findall(r"`([A-Z][A-Z_]+\.md)`", text):  # a file named in code style
            if not list(ROOT.rglob(name)):
                broken.append(f"{doc.relative_to(ROOT)} names {name}")
    assert broken == []
