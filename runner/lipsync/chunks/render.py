"""Render chunks: each chunk's frames through the render engine into its own elementary stream,
then into the work area. Used in-process and by each worker process (``workers``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from .. import cpus, env
from ..audio import load_mono
from ..io.probe import VideoInfo
from ..io.publish import open_store
from ..models import FrameModel, load_model
from ..preview import Sheet
from ..render import Engine, converter_for, encode_args, encoder_threads, timeline_for
from ..spec import LipSyncJobSpec
from ..video.source import source_index
from ..video.track import CropBox
from . import Chunk, WorkArea


@dataclass(frozen=True)
class RenderTask:
    """Everything a process needs to render chunks of one job (picklable: workers get it as a file)."""

    spec: LipSyncJobSpec
    video: Path
    audio: Path
    weights: Path | None
    info: VideoInfo
    n_src: int
    n_out: int
    fps: Fraction
    boxes: list[CropBox | None]
    work_uri: str
    work_key: str
    scratch: Path
    preview: tuple[int, ...] = ()  # the output frames whose tiles preview.jpg shows


    def work_area(self) -> WorkArea:
        return WorkArea(open_store(self.work_uri), self.work_key)


def prepared_model(task: RenderTask, model: FrameModel | None = None, speech: np.ndarray | None = None) -> FrameModel:
    """The task's model, loaded unless given, with the speech (mono at the model's rate; decoded
    unless given) prepared for every output frame."""
    if model is None:
        model = load_model(task.spec, task.weights)  # type: ignore[assignment]
    assert model is not None
    if speech is None:
        speech = load_mono(task.audio, model.audio_rate)
    model.prepare(speech, float(task.fps), task.n_out)
    return model


def render_chunks(task: RenderTask, chunks: list[Chunk], model: FrameModel,
                  on_frames: Callable[[int], None] = lambda n: None,
                  on_chunk: Callable[[Chunk], None] = lambda c: None, sheet: Sheet | None = None) -> int:
    """Render ``chunks`` in order into the work area; returns the frames rendered.

    ``on_frames(n)`` reports ``n`` frames written so far within the current chunk; ``on_chunk`` each chunk
    stored. Each chunk's preview tiles (``task.preview`` within its range) are cut as its frames
    pass and stored with it; ``sheet`` collects them too. A chunk interrupted by an error or a
    signal leaves nothing that counts as finished.
    """
    timeline = timeline_for(task.video, task.info, task.n_src)
    order = [source_index(i, task.n_src) for i in range(task.n_out)]
    converter = converter_for(timeline, task.info)
    batch = getattr(model, "batch_size", 16)
    work = task.work_area()
    out = task.spec.output
    total = 0
    task.scratch.mkdir(parents=True, exist_ok=True)
    for chunk in chunks:
        stream = task.scratch / f"chunk-{chunk.index:05d}.mp4"
        argv = encode_args(stream, timeline.layout, timeline.fps, task.info.colour, codec=out.video_codec,
                           crf=out.crf, preset=out.preset, sample_aspect_ratio=task.info.sample_aspect_ratio,
                           threads=encoder_threads())
        done_before = total
        def progress(f: float, c: Chunk = chunk, base: int = done_before) -> None:
            on_frames(base + int(round(f * task.n_out)) - c.first)  # f: output frames written ÷ n_out

        tiles = Sheet([i for i in task.preview if chunk.first <= i < chunk.last])
        engine = Engine(model, converter, task.spec.padding, batch, tiles, progress)
        written = engine.run(timeline, order[:chunk.last], task.boxes, argv, first=chunk.first)
        if written != chunk.frames:
            raise RuntimeError(f"chunk {chunk.index} wrote {written} frames, planned {chunk.frames}")
        work.put(chunk, stream, tiles.tiles)
        if sheet is not None:
            for tile in tiles.tiles:
                sheet.add(*tile)
        stream.unlink(missing_ok=True)
        total += written
        on_chunk(chunk)
    return total


WORKER_BASE_BYTES = 256 << 20  # a worker's Python, numpy and OpenCV
WORKER_FRAMES = 200  # full frames' worth a worker holds: x264's lookahead and threads (~160 at 1080p), its pool, its decoder
TORCH_MODEL_BYTES = 1 << 30  # torch and a model's weights and activations (Wav2Lip on CPU: ~0.7 GiB)


def worker_bytes(frame_bytes: int, torch_model: bool) -> int:
    """About how much memory one chunk worker's process tree holds at its peak (measured at
    1080p with the baseline model: ~640 MiB a worker)."""
    return WORKER_BASE_BYTES + WORKER_FRAMES * frame_bytes + (TORCH_MODEL_BYTES if torch_model else 0)


def default_workers(chunks: int, per_worker: int | None = None, root: Path = cpus.CGROUP_ROOT,
                    cores: int | None = None) -> int:
    """Processes for ``--workers auto``: one per 4 cores of the CPU budget (``lipsync.cpus``; each
    drives an encoder that uses several), no more than the memory limit holds at ``per_worker``
    bytes each (``worker_bytes``; a pod's ``limits.memory``, 80 % of it), LIPSYNC_WORKERS if
    set; never more than there are chunks to render. ``cores``: the CPU budget (default: this
    process's)."""
    if os.environ.get("LIPSYNC_WORKERS", "").strip():
        return max(1, min(chunks, int(env.number("LIPSYNC_WORKERS", 1, int, minimum=1, inclusive=True, stage="render"))))
    n = (cpus.budget(root) if cores is None else cores) // 4
    limit = cpus.memory_limit(root)
    if limit is not None and per_worker:
        n = min(n, int(0.8 * limit) // per_worker)
    return max(1, min(chunks, n))
