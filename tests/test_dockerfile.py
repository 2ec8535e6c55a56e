"""The Dockerfile, read without a Docker engine: stages, the non-root user, pinned bases, the
variant switch and the entry points."""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


@dataclass
class Instruction:
    cmd: str          # upper-case keyword
    value: str        # the rest, continuation lines joined
    line: int


@dataclass
class Stage:
    name: str | None
    base: str         # as written (may hold ${ARG}s)
    index: int
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, cmd: str) -> list[Instruction]:
        return [i for i in self.instructions if i.cmd == cmd]


def parse(text: str) -> tuple[list[Instruction], list[Stage]]:
    """Instructions (comments dropped, ``\\`` continuations joined) and the stages they form.
    Heredocs are not used in this Dockerfile, and refused here so a new one is noticed."""
    instructions: list[Instruction] = []
    buf, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # a comment line inside a continued instruction
        if not buf:
            start = n
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        cmd, _, rest = buf.partition(" ")
        assert "<<" not in rest or cmd.upper() != "RUN", f"line {start}: heredocs are not parsed"
        instructions.append(Instruction(cmd.upper(), rest.strip(), start))
        buf = ""
    assert not buf, "the Dockerfile ends inside a continued line"
    stages: list[Stage] = []
    for ins in instructions:
        if ins.cmd == "FROM":
            words = [w for w in ins.value.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
            stages.append(Stage(name, words[0], len(stages)))
        elif stages:
            stages[-1].instructions.append(ins)
    return instructions, stages


INSTRUCTIONS, STAGES = parse(DOCKERFILE.read_text())
STAGE = {s.name: s for s in STAGES if s.name}


def global_args() -> dict[str, str]:
    """ARGs before the first FROM, with their defaults."""
    out = {}
    for ins in INSTRUCTIONS:
        if ins.cmd == "FROM":
            break
        if ins.cmd == "ARG":
            name, _, default = ins.value.partition("=")
            out[name] = default
    return out


def resolve(ref: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), ref)


def exec_form(ins: Instruction) -> list[str]:
    import json

    value = json.loads(ins.value)
    assert isinstance(value, list), f"line {ins.line}: {ins.cmd} must use the exec (JSON) form"
    return value


def final_user(stage: str = "runtime") -> str:
    users = STAGE[stage].all("USER")
    assert users, f"stage {stage} sets no USER"
    return users[-1].value


def test_stages():
    names = [s.name for s in STAGES]
    assert names == ["os-cuda", "os-cpu", "base", "builder", "latentsync", "runtime"]
    assert STAGES[-1].name == "runtime"  # `docker build .` gives the runtime image
    assert STAGE["base"].base == "os-${VARIANT}"
    assert STAGE["builder"].base == "base" and STAGE["runtime"].base == "base"
    assert STAGE["latentsync"].base == "base"  # a target of its own: --target latentsync


def test_bases_are_pinned():
    args = global_args()
    for variant in ("cuda", "cpu"):
        for stage in STAGES:
            base = resolve(stage.base, {**args, "VARIANT": variant})
            if base in STAGE:
                continue
            assert "$" not in base, f"{stage.name}: unresolved base {base}"
            name, _, tag = base.rpartition(":")
            assert name and tag and tag != "latest" and "/" not in tag, f"{stage.name}: {base} is not pinned"
    cuda = resolve(STAGE["os-cuda"].base, args)
    assert re.match(r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu\d\d\.\d\d$", cuda), cuda
    assert not [i for i in INSTRUCTIONS if re.search(r":latest\b", i.value)]


def test_variant_switch():
    args = global_args()
    assert args["VARIANT"] == "cuda"
    builder = " ".join(i.value for i in STAGE["builder"].all("RUN"))
    assert "whl/cpu" in " ".join(i.value for i in STAGE["builder"].all("ARG"))
    assert re.search(r"cpu\)\s*index=", builder) and re.search(r"cuda\)\s*index=", builder)
    assert "--index-url" in builder and "torch==${TORCH_VERSION}" in builder
    # the torch pin matches what CI installs
    setup = (ROOT / ".ci" / "setup").read_text()
    pinned = re.search(r"torch==([\w.+-]+)", setup)
    torch_arg = next(i.value for i in STAGE["builder"].all("ARG") if i.value.startswith("TORCH_VERSION="))
    if pinned:
        assert torch_arg == f"TORCH_VERSION={pinned.group(1)}"


def test_base_has_python_311_and_ffmpeg():
    base = " ".join(i.value for i in STAGE["base"].all("RUN"))
    args = {i.value.partition("=")[0]: i.value.partition("=")[2] for i in STAGE["base"].all("ARG")}
    assert args.get("PYTHON") == "python3.11"
    assert "ffmpeg" in base and "${PYTHON}-venv" in base and "-m venv" in base


def test_installs_the_project_with_the_operator_extra():
    runs = " ".join(i.value for i in STAGE["builder"].all("RUN"))
    assert 'pip install ".[operator,wav2lip]"' in runs  # torch is an extra: the runner image needs it
    copied = [shlex.split(i.value)[:-1] for i in STAGE["builder"].all("COPY")]
    sources = {p.rstrip("/") for srcs in copied for p in srcs}
    assert {"pyproject.toml", "runner", "operator"} <= sources
    runtime_copies = STAGE["runtime"].all("COPY")
    assert [c.value for c in runtime_copies] == ["--from=builder /opt/venv /opt/venv"]


@pytest.mark.parametrize("stage", ["runtime", "latentsync"])
def test_runs_as_non_root_numeric_user(stage: str):
    user = final_user(stage)
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER {user}: must be a non-root numeric UID"
    assert not gid or (gid.isdigit() and int(gid) != 0)
    # the user exists in the image with that UID
    base = " ".join(i.value for i in STAGE["base"].all("RUN"))
    assert f"--uid {uid}" in base
    # nothing after USER switches back to root
    idx = max(i for i, ins in enumerate(STAGE[stage].instructions) if ins.cmd == "USER")
    assert all(ins.cmd not in ("RUN", "USER") for ins in STAGE[stage].instructions[idx + 1:])


def test_entry_points():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    (cmd,) = STAGE["runtime"].all("CMD")
    (entry,) = STAGE["runtime"].all("ENTRYPOINT")
    assert exec_form(cmd) == ["lipsync-operator"] and "lipsync-operator" in scripts
    assert "lipsync" in scripts  # the runner: `docker run IMAGE lipsync run job.yaml`
    assert exec_form(entry)[0].endswith("tini")  # PID 1 that reaps ffmpeg children, forwards SIGTERM
    builder = " ".join(i.value for i in STAGE["builder"].all("RUN"))
    assert "command -v lipsync lipsync-operator" in builder


def test_no_weights_baked_in():
    for stage in STAGES:
        for ins in stage.all("COPY") + stage.all("ADD"):
            assert not re.search(r"\.(pth|pt|ckpt|safetensors|onnx)\b|weights|checkpoints", ins.value), ins
        assert not stage.all("ADD"), "use COPY; ADD fetches URLs and unpacks archives"
    for ins in INSTRUCTIONS:
        if ins.cmd == "RUN":
            assert not re.search(r"(curl|wget)\b.*\.(pth|pt|ckpt|safetensors)", ins.value), ins
    ignore = (ROOT / ".dockerignore").read_text().split()
    for pattern in ("**/*.pth", "**/*.safetensors", "**/*.ckpt", ".git", ".venv"):
        assert pattern in ignore


@pytest.mark.parametrize("path", ["pyproject.toml", "runner"])
def test_copied_paths_exist(path: str):
    assert (ROOT / path).exists()


def test_latentsync_target_is_pinned_and_matches_the_preset():
    from lipsync.models import latentsync

    args = {i.value.partition("=")[0]: i.value.partition("=")[2] for i in STAGE["latentsync"].all("ARG")}
    assert re.fullmatch(r"[0-9a-f]{40}", args["LATENTSYNC_COMMIT"])
    env = " ".join(i.value for i in STAGE["latentsync"].all("ENV"))
    assert f"LATENTSYNC_HOME={latentsync.DEFAULT_HOME}" in env
    assert "HF_HOME=" in env  # the build-time model cache, read offline at run time


def test_runner_pods_run_as_the_image_user():
    from lipsync_operator.jobs import RUNNER_UID

    assert final_user("runtime") == f"{RUNNER_UID}:{RUNNER_UID}"
