"""The command model: any lip-sync program that turns a face clip and a speech file into a face clip.

The contract (docs/models.md): the runner writes the crop clip and a mono WAV, runs the argv with
``{video}``, ``{audio}`` and ``{output}`` replaced by their paths (no shell: a path is one
argument whatever it holds), and reads back ``{output}``, which must have the crop clip's frame
count, size and frame rate. Everything the program prints goes to the run log, never to the
runner's stdout, which is the JSON event stream the operator parses, and never into an error's
message (which reaches ``status.message``, Events and the termination message): a failure says
how the program ended and where its output is; the last lines ride along as ``detail``, which only
the CLI's terminal output shows.

The program is not trusted with the runner's secrets. It runs with a scrubbed environment
(:func:`program_env`: ``PATH``, locale, ``HOME``/``TMPDIR``, the GPU's variables and the model's
own; no ``AWS_*``, no ``LIPSYNC_*``), and before it starts the runner marks itself non-dumpable
(``prctl(PR_SET_DUMPABLE, 0)``), so a program of the same user cannot read the runner's
credentials from ``/proc/<runner>/environ`` or its memory either.

The program runs in its own process group, so a timeout kills everything it started (a Python
entry point that forks ffmpeg, say), not just the first process.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import ffmpeg

from .. import credentials, log
from ..errors import ModelFailed, ModelTimeout
from ..spec import CommandOptions
from .base import ClipJob

PLACEHOLDER = re.compile(r"\{(video|audio|output)\}")  # one pass: a path holding "{audio}" stays as it is
TAIL_LINES = 20  # output lines quoted in a failure: enough for a Python traceback's end
KILL_GRACE_S = 5.0  # SIGTERM first, so a GPU program can release the device; then SIGKILL
FPS_TOLERANCE = Fraction(1, 1000)  # writers that store 29.97 for 30000/1001 are right enough
# What a program inherits from the runner's environment: names, and name prefixes ending in "_".
PASS_ENV = ("PATH", "HOME", "TMPDIR", "TMP", "TEMP", "LANG", "LANGUAGE", "TZ", "TERM", "USER", "LOGNAME",
            "LD_LIBRARY_PATH", "SSL_CERT_FILE", "SSL_CERT_DIR")
PASS_ENV_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "HF_HUB_OFFLINE", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class ClipFacts:
    width: int
    height: int
    fps: Fraction
    frames: int


@dataclass(frozen=True)
class CommandModel:
    """Runs ``argv`` (a template) on a ClipJob.

    ``output_fps`` is the rate the program writes at when it is not the crop clip's (LatentSync
    always works at 25 fps); the clip render converts it back. ``extra_frames`` is how many
    frames past the crop clip's length the program may append (they are dropped).
    """

    argv: tuple[str, ...]
    crop_size: int
    audio_rate: int
    timeout_s: float
    name: str = "command"
    env: Mapping[str, str] = field(default_factory=dict)
    output_fps: Fraction | None = None
    extra_frames: int = 0

    @classmethod
    def from_spec(cls, argv: Sequence[str], options: CommandOptions) -> "CommandModel":
        return cls(tuple(argv), options.crop_size, options.audio_rate, float(options.timeout_seconds))

    def command(self, job: ClipJob) -> list[str]:
        """The argv for one job: each placeholder replaced inside any argument (``--in={video}``)."""
        values = {"video": str(job.video), "audio": str(job.audio), "output": str(job.output)}
        return [PLACEHOLDER.sub(lambda m: values[m.group(1)], arg) for arg in self.argv]

    def workdir(self, job: ClipJob) -> Path:
        """Where the command runs: the job's scratch folder, so relative paths it writes stay private."""
        return job.output.parent

    def run_clip(self, job: ClipJob) -> None:
        argv = self.command(job)
        run_command(argv, cwd=self.workdir(job), env=program_env(os.environ, self.env), timeout_s=self.timeout_s,
                    name=self.name)
        if not job.output.is_file() or job.output.stat().st_size == 0:
            raise ModelFailed(f"{self.name} command exited 0 but wrote no {job.output.name} (argv: {argv})",
                              stage="model")
        check_output(self.name, probe_clip(job.output), job, self.output_fps or job.fps, self.extra_frames)


def program_env(env: Mapping[str, str], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a model program gets: the harmless part of ``env`` (:data:`PASS_ENV`,
    :data:`PASS_ENV_PREFIXES`) plus ``extra`` (the model's own settings). Storage credentials,
    the job document and every other variable stay with the runner."""
    out = {k: v for k, v in env.items() if k in PASS_ENV or k.startswith(PASS_ENV_PREFIXES)}
    out.update(extra or {})
    return out


def run_command(argv: list[str], *, cwd: Path, env: Mapping[str, str], timeout_s: float, name: str) -> None:
    """Run to completion; ModelTimeout past ``timeout_s``, ModelFailed on a non-zero exit.

    ``env`` is given as is: callers pass :func:`program_env`. The program's output goes to the
    run log only; a ModelFailed carries its last lines as ``detail``, never in its message.
    """
    log.event(f"{name}: running {argv[0]}", event="model-command", argv=argv, cwd=str(cwd))
    credentials.undumpable()
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as e:
        raise ModelFailed(f"{name} command {argv[0]!r} could not start: {e.strerror or e}", stage="model") from None
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    reader = threading.Thread(target=_log_lines, args=(proc, tail, name), daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        reader.join(timeout=2)
        raise ModelTimeout(f"{name} command ran past its limit of {timeout_s:g} s and was killed "
                           f"(raise options.timeoutSeconds if the clip is long)", stage="model") from None
    finally:
        if proc.poll() is None:  # interrupted (Ctrl-C, a signal to the runner): leave nothing running
            _kill_group(proc)
    reader.join(timeout=2)
    if code != 0:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        err = ModelFailed(f"{name} command {how}; its output is in the runner's log, not in this message",
                          stage="model")
        err.detail = "\n".join(tail) or "(it printed nothing)"
        raise err


def _log_lines(proc: subprocess.Popen, tail: deque[str], name: str) -> None:
    """Every line the command prints into the run log; a progress bar's ``\\r`` redraws collapse
    to their final state, as a terminal would show them."""
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip("\r\n").rsplit("\r", 1)[-1].rstrip()
        if line:
            tail.append(line)
            log.event(line, event="model-output", model=name, console=False)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
        os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group, leader or children
    except ProcessLookupError:
        pass  # the whole group is gone
    proc.wait()


def probe_clip(path: Path) -> ClipFacts:
    """Size, rate and frame count of a model's clip (packets counted: no decode)."""
    try:
        info = ffmpeg.probe(str(path), select_streams="v:0", count_packets=None)
    except ffmpeg.Error as e:
        lines = (e.stderr or b"").decode(errors="replace").strip().splitlines()
        detail = lines[-1] if lines else "ffprobe failed"
        raise ModelFailed(f"the model's output {path.name} is not a readable video ({detail})", stage="model") from None
    streams = info.get("streams", [])
    if not streams:
        raise ModelFailed(f"the model's output {path.name} has no video stream", stage="model")
    s = streams[0]
    num, _, den = str(s.get("r_frame_rate", "0/1")).partition("/")
    fps = Fraction(int(num), int(den)) if den and int(den) else Fraction(0)  # "0/0": no rate recorded
    return ClipFacts(int(s.get("width", 0)), int(s.get("height", 0)), fps, int(s.get("nb_read_packets", 0)))


def check_output(name: str, got: ClipFacts, job: ClipJob, fps: Fraction, extra_frames: int) -> None:
    """ModelFailed naming every fact that differs from the crop clip's, expected vs got."""
    frames = round(job.frames * fps / job.fps)  # in the program's own frame rate
    problems = []
    if (got.width, got.height) != (job.size, job.size):
        problems.append(f"size: expected {job.size}x{job.size}, got {got.width}x{got.height}")
    if abs(got.fps - fps) > FPS_TOLERANCE * fps:
        problems.append(f"fps: expected {float(fps):g}, got {float(got.fps):g}")
    if not frames <= got.frames <= frames + extra_frames:
        want = f"{frames}" if not extra_frames else f"{frames} to {frames + extra_frames}"
        problems.append(f"frame count: expected {want}, got {got.frames}")
    if problems:
        raise ModelFailed(f"{name} output does not match the crop clip it was given: " + "; ".join(problems),
                          stage="model")
