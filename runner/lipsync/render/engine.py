"""The render loop for frame models: decode → face window → model → blend → encode, overlapped.

Four things run at once: the decoder thread fills pool buffers; this thread cuts each face
window (converted to the model's BGR) into a batch and blends finished batches back into their
pictures; the model runs each batch on its own worker thread; the encoder thread writes pictures
out and returns their buffers. At most about two batches of full frames wait for the model
(``frames_in_flight``), so memory is bounded by the pool, whatever the clip's length.

Batches have a constant shape (the last one is padded) for models that ask for it
(``pad_batches``), so shape-specialising backends (cuDNN autotuning) tune once per process.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .. import cpus, env
from ..models import FrameModel
from ..preview import TILE, Sheet
from ..video import overlay
from ..video.track import CropBox
from .colour import Converter
from .frames import PREFETCH, WRITE_DEPTH, FramePool, Picture, PlanarWriter
from .timeline import Timeline



def frames_in_flight(frame_bytes: int, batch_size: int) -> int:
    """How many full frames may wait for the model: two batches, within LIPSYNC_FRAME_BUFFER_MB (256)."""
    budget = env.number("LIPSYNC_FRAME_BUFFER_MB", 256.0, stage="render") * 1024 * 1024
    return max(2, min(2 * batch_size, int(budget // frame_bytes)))


@dataclass
class _Group:
    """Consecutive output frames and the batch of face windows cut from them."""

    pictures: list[tuple[int, Picture, CropBox | None]] = field(default_factory=list)
    crops: list[np.ndarray] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    before: dict[int, np.ndarray] = field(default_factory=dict)  # preview tiles, before the model
    result: Future | None = None


@dataclass
class Engine:
    """Renders ``boxes`` (one per source frame) over ``timeline`` with ``model`` into ``writer``."""

    model: FrameModel
    converter: Converter
    padding: float
    batch_size: int
    sheet: Sheet
    on_progress: Callable[[float], None] = lambda f: None

    def run(self, timeline: Timeline, order: list[int], boxes: list[CropBox | None], writer_argv: list[str],
            first: int = 0) -> int:
        """Writes output frames ``first`` .. ``len(order) - 1``; returns how many were written."""
        n_out = len(order)
        in_flight = frames_in_flight(timeline.layout.frame_bytes, self.batch_size)
        batch = max(1, min(self.batch_size, in_flight // 2))
        # two batches (one at the model, one filling) + the decoder's and the encoder's queues
        pool = FramePool(timeline.layout, 2 * batch + PREFETCH + WRITE_DEPTH + 4)
        size = self.model.crop_size or 256
        pad = bool(getattr(self.model, "pad_batches", False))
        groups: deque[_Group] = deque()  # submitted to the model, not yet blended

        with contextlib.ExitStack() as stack:
            executor = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="model"))
            stack.callback(_cancel, groups)
            writer = stack.enter_context(PlanarWriter(writer_argv, pool.put, depth=WRITE_DEPTH))
            frames = stack.enter_context(contextlib.closing(timeline.pictures(pool, n_out, first)))

            def submit(group: _Group) -> None:
                if group.crops:
                    crops, idx = np.stack(group.crops), np.asarray(group.indices)
                    if pad and len(crops) < batch:
                        extra = batch - len(crops)
                        crops = np.concatenate([crops, np.repeat(crops[-1:], extra, axis=0)])
                        idx = np.concatenate([idx, np.repeat(idx[-1:], extra)])
                    group.result = executor.submit(self.model.infer, crops, idx)
                groups.append(group)

            def finish() -> None:
                group = groups.popleft()
                synced = group.result.result() if group.result is not None else None
                k = 0
                for i, pic, box in group.pictures:
                    if box is not None:
                        assert synced is not None
                        self.converter.blend(pic, box, synced[k], overlay.mouth_mask(box.size, self.padding)[:, :, 0])
                        k += 1
                        if i in group.before:
                            self.sheet.add(i, group.before[i], self.converter.window(pic, box, TILE))
                    writer.write(pic)
                self.on_progress((writer.frames + first) / n_out)

            group = _Group()
            for i, pic in enumerate(frames, first):
                box = boxes[order[i]]
                group.pictures.append((i, pic, box))
                if box is not None:
                    group.crops.append(self.converter.window(pic, box, size))
                    group.indices.append(i)
                    if self.sheet.wants(i):
                        group.before[i] = self.converter.window(pic, box, TILE)
                if len(group.crops) >= batch or len(group.pictures) >= batch:
                    submit(group)
                    group = _Group()
                    while len(groups) > 1:  # the model runs this batch while the last is blended
                        finish()
            if group.pictures:
                submit(group)
            while groups:
                finish()
            written = writer.frames
        return written


def _cancel(groups: deque[_Group]) -> None:
    """On the way out after an error: don't let queued batches run; wait for the running one."""
    for g in groups:
        if g.result is not None:
            g.result.cancel()
    groups.clear()


def encoder_threads() -> int | None:
    """The encoder's threads: ``LIPSYNC_ENCODER_THREADS``; else, where the CPU budget is below the
    cores in view (``lipsync.cpus``: a pod's request on a bigger node), what x264 would pick for
    the budget (1.5 per core); else None (the encoder picks from the cores, as x264 does)."""
    value = env.number("LIPSYNC_ENCODER_THREADS", 0, int, inclusive=True, stage="render")
    if value:
        return int(value)
    return max(1, cpus.budget() * 3 // 2) if cpus.constrained() else None

