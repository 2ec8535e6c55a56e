"""Local workers: chunks rendered by K processes at once (``lipsync run --workers K``).

Each worker is a fresh ``python -m lipsync.chunks.workers TASK SHARE`` process: it loads the
model itself (a GPU is shared by the workers' CUDA contexts; Wav2Lip's weights are small), renders
its share of the chunks into the work area and prints one line per finished chunk. The encoder
threads and the CPU budget (``lipsync.cpus``) are divided between the workers. On any failure or signal the parent stops every worker
(SIGTERM, then SIGKILL after a grace period): a worker abandons its current chunk, which never
counts as finished.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .. import cpus, credentials, malloc
from ..errors import LipSyncError
from . import Chunk
from .render import RenderTask, prepared_model, render_chunks

GRACE_S = 10.0


def run_workers(task: RenderTask, shares: list[list[Chunk]], on_chunk: Callable[[Chunk], None]) -> None:
    """Render each share in its own process; raise the first worker's error."""
    task_file = task.scratch / "task.pickle"
    task.scratch.mkdir(parents=True, exist_ok=True)
    task_file.write_bytes(pickle.dumps(task))
    per_worker = max(1, cpus.budget() // max(1, len(shares)))  # each worker's CPU budget (libraries, decoder, encoder)
    procs: list[tuple[subprocess.Popen, Path]] = []
    readers: list[threading.Thread] = []
    by_index = {c.index: c for share in shares for c in share}
    try:
        for k, share in enumerate(shares):
            result = task.scratch / f"worker-{k}.json"
            env = {**malloc.python_child_env(os.environ), "LIPSYNC_ENCODER_THREADS": os.environ.get("LIPSYNC_ENCODER_THREADS", str(per_worker)),
                   "LIPSYNC_PARENT_PID": str(os.getpid()), cpus.CPUS_ENV: str(per_worker)}
            proc = subprocess.Popen([sys.executable, "-m", "lipsync.chunks.workers", str(task_file), str(result),
                                     ",".join(str(c.index) for c in share)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
            procs.append((proc, result))
            assert proc.stdin is not None
            proc.stdin.write(credentials.for_child().decode())  # the credentials, never in its environment
            proc.stdin.close()

            def read(p: subprocess.Popen = proc) -> None:
                assert p.stdout is not None
                for line in p.stdout:
                    if line.startswith("chunk-done "):
                        on_chunk(by_index[int(line.split()[1])])

            t = threading.Thread(target=read, daemon=True)
            t.start()
            readers.append(t)
        failure: LipSyncError | None = None
        running = list(procs)
        while running and failure is None:  # the first failure stops the others at once
            for proc, result in list(running):
                code = proc.poll()
                if code is None:
                    continue
                running.remove((proc, result))
                if code != 0:
                    failure = _failure(result, code)
                    break
            if running and failure is None:
                time.sleep(0.1)
        _stop(procs)
        for t in readers:
            t.join()
        if failure is not None:
            raise failure
    except BaseException:
        _stop(procs)
        raise


def _failure(result: Path, code: int) -> LipSyncError:
    try:
        return pickle.loads(result.read_bytes())
    except (OSError, pickle.UnpicklingError, EOFError):
        return LipSyncError(f"a render worker exited with status {code}", stage="render")


def _stop(procs: list[tuple[subprocess.Popen, Path]]) -> None:
    for proc, _ in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc, _ in procs:
        try:
            proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _Terminated(BaseException):
    pass


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated(signum)


def _die_with_parent() -> None:
    """SIGTERM this worker when the process that started it dies, even by SIGKILL (Linux), so an
    orphan never goes on writing chunks for a run that is gone."""
    parent = int(os.environ.get("LIPSYNC_PARENT_PID", os.getppid()))
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it died before the request took effect
        raise _Terminated(signal.SIGTERM)


def main(argv: list[str]) -> int:
    task_file, result, indices = Path(argv[0]), Path(argv[1]), {int(i) for i in argv[2].split(",") if i}
    credentials.adopt(sys.stdin.buffer.read())  # non-dumpable first, then the parent's credentials
    signal.signal(signal.SIGTERM, _terminate)
    malloc.adopt()  # started with the model's malloc settings: its ffmpeg children do not inherit them
    cpus.apply_to_libraries()  # this worker's share of the budget
    try:
        _die_with_parent()
        task: RenderTask = pickle.loads(task_file.read_bytes())
        from . import plan_chunks

        chunks = [c for c in plan_chunks(task.n_out, float(task.fps), task.spec.render.chunk_seconds)
                  if c.index in indices]
        model = prepared_model(task)
        render_chunks(task, chunks, model, on_chunk=lambda c: print(f"chunk-done {c.index}", flush=True))
        return 0
    except _Terminated:
        return 128 + signal.SIGTERM
    except LipSyncError as e:
        result.write_bytes(pickle.dumps(e))
        return e.exit_code
    except Exception as e:  # noqa: BLE001 - reported to the parent as what it is
        result.write_bytes(pickle.dumps(LipSyncError(f"unexpected {type(e).__name__}: {e}", stage="render")))
        print(json.dumps({"error": repr(e)}), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
