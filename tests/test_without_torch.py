"""torch is an extra ([wav2lip]): the baseline path, the operator and every CLI command but
`score` run without it, and what needs it says so, naming the pip command, before any work.

Each check runs the real CLI in a fresh process whose imports of torch fail (a stand-in package
first on PYTHONPATH that raises ModuleNotFoundError, as an environment without torch would). The same was checked once in a real
fresh virtual environment: `pip install .` (no extras), then `lipsync sample && lipsync run
examples/job.yaml` (see the report of issue 13).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from lipsync.errors import REASONS

from .media import RUNNER, clip, job_file, speech

ROOT = Path(__file__).resolve().parent.parent
OPERATOR = ROOT / "operator"

# A package named torch, first on the path, whose import fails as a missing torch's would. It is
# inherited through the environment, so it holds in processes the CLI starts or re-executes
# (run and score re-exec themselves once with malloc tunables).
NO_TORCH = 'raise ModuleNotFoundError("No module named \'torch\'", name="torch")\n'


@pytest.fixture(scope="module")
def shadow(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("no-torch")
    (folder / "torch").mkdir()
    (folder / "torch" / "__init__.py").write_text(NO_TORCH)
    return folder


def without_torch(shadow: Path, code: str, *, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import sys\n" + code], capture_output=True, text=True, cwd=cwd,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{shadow}:{RUNNER}:{OPERATOR}"}, timeout=300)


def cli_without_torch(shadow: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return without_torch(shadow, f"sys.argv = ['lipsync', *{list(args)!r}]\n"
                         "from lipsync.cli import main\n"
                         "code = main()\n"
                         "assert 'torch' not in sys.modules\n"
                         "sys.exit(code)\n", cwd=cwd)


def test_torch_is_an_extra_not_a_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.split(">")[0].split("=")[0].strip() == "torch"]
    assert any(d.startswith("torch") for d in project["optional-dependencies"]["wav2lip"])
    assert "wav2lip" in (ROOT / ".ci" / "setup").read_text().split("-e '.[")[1].split("]'")[0].split(",")


def test_the_blocker_really_blocks(shadow: Path) -> None:
    proc = without_torch(shadow, "import torch")
    assert proc.returncode == 1 and "No module named 'torch'" in proc.stderr


def test_operator_and_cli_import_without_torch(shadow: Path) -> None:
    proc = without_torch(shadow, "import lipsync.cli, lipsync.pipeline, lipsync.models.baseline, lipsync.models.command\n"
                         "import lipsync_operator.main\n"
                         "assert 'torch' not in sys.modules\n")
    assert proc.returncode == 0, proc.stderr
    assert cli_without_torch(shadow, "crd").returncode == 0


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("notorch")
    clip(d / "face.mp4", seconds=1.0)
    speech(d / "speech.wav", text="Hi there.")
    return d


@pytest.mark.slow
def test_baseline_renders_without_torch(shadow: Path, media: Path, tmp_path: Path) -> None:
    job = job_file(tmp_path, video=str(media / "face.mp4"), audio=str(media / "speech.wav"),
                   timing={"follow": "video"})
    proc = cli_without_torch(shadow, "run", str(job), "--log-format", "json")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["output"]["frames"] == 25


def test_wav2lip_asks_for_torch_before_fetching_anything(shadow: Path, media: Path, tmp_path: Path) -> None:
    # the weights do not exist: a runner without torch must say what to install, not InputNotFound
    job = job_file(tmp_path, video=str(media / "face.mp4"), audio=str(media / "speech.wav"),
                   model={"name": "wav2lip", "weights": str(tmp_path / "absent.pth")})
    proc = cli_without_torch(shadow, "run", str(job), "--log-format", "json")
    assert proc.returncode == REASONS["MissingDependency"].exit_code == 26, proc.stderr
    failed = [json.loads(line) for line in (proc.stdout + proc.stderr).splitlines() if '"failed"' in line]
    assert failed and failed[-1]["reason"] == "MissingDependency"
    assert "model 'wav2lip' needs PyTorch" in failed[-1]["msg"]
    assert "pip install 'lipsync-operator[wav2lip]'" in failed[-1]["msg"]
    assert not (tmp_path / "out").exists()


def test_score_asks_for_torch(shadow: Path, media: Path) -> None:
    proc = cli_without_torch(shadow, "score", str(media / "face.mp4"), "--weights", str(media / "absent.pth"))
    assert proc.returncode == REASONS["MissingDependency"].exit_code, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr  # one line, no traceback
    assert "lipsync score needs PyTorch" in proc.stderr and "pip install 'lipsync-operator[wav2lip]'" in proc.stderr
