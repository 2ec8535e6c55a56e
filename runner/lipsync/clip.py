"""Clip-level render: for models that take a whole clip (an external command, LatentSync) instead
of batches of crops.

Three steps, each streaming, so memory stays flat whatever the clip's length:

1. **crop pass** — the source is decoded once; every output frame that has a face is cut at the
   model's size (the same face window as for frame models) into a lossless crop clip, and the
   speech under that frame goes into the model's WAV. The crop clip holds face frames only: a
   model given a frame without a face fails (LatentSync's detector raises) or invents one. Crop
   frame k is the k-th output frame with a face, so the face track itself is the mapping; and as
   the WAV is spliced the same way, picture and speech stay in step across the gaps.
2. **model** — ``model.run_clip`` runs the program on the files and checks what it wrote.
3. **overlay pass** — the source is decoded again in step with the model's clip, one frame of
   each at a time; face frames are pasted back at full resolution (``render.Converter.blend``, in the source's own planes), the others
   pass through untouched, and everything is encoded once, as for a frame model.

The crop clip is H.264 with a zero quantiser in 4:4:4 (``-crf 0``: lossless for 8-bit x264) in
MP4: every model's reader (ffmpeg, OpenCV, decord, imageio) opens it, unlike FFV1 in Matroska,
and the only loss is the BGR → YUV rounding (one level at most), not a second generation of
compression artefacts under the model's input.
"""

from __future__ import annotations

import wave
from contextlib import closing
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from .errors import InvalidMedia, ModelFailed
from .models.base import ClipJob, ClipModel
from .io.probe import VideoInfo
from .preview import TILE, Sheet
from .render import Converter, FramePool, PlanarWriter, Timeline, converter_for, encoder_for
from .spec import LipSyncJobSpec
from .video import overlay
from .video.decode import FrameReader, decode_command
from .video.encode import FrameWriter, encode_command, even
from .video.source import source_index
from .video.track import CropBox

CROP_PASS, MODEL_DONE = 0.15, 0.85  # the render stage's progress at the end of the crop pass and of the model


def render_clip(spec: LipSyncJobSpec, model: ClipModel, timeline: Timeline, info: VideoInfo, n_out: int,
                boxes: list[CropBox | None], audio: np.ndarray, work: Path, dest: Path, sheet: Sheet,
                on_progress: Callable[[float], None]) -> int:
    """Crop clip → model → overlay → ``dest`` (video only); returns the frames written."""
    work.mkdir(parents=True, exist_ok=True)
    track = [boxes[source_index(i, timeline.n_src)] for i in range(n_out)]
    faces = [i for i, box in enumerate(track) if box is not None]
    job = ClipJob(video=work / "crop.mp4", audio=work / "speech.wav", output=work / "synced.mp4",
                  fps=timeline.fps, frames=len(faces), size=even(model.crop_size))
    converter = converter_for(timeline, info)
    if faces:
        write_crop_clip(timeline, converter, track, job, lambda f: on_progress(CROP_PASS * f))
        write_speech(job.audio, audio, model.audio_rate, float(timeline.fps), faces)
        model.run_clip(job)
    on_progress(MODEL_DONE)
    return overlay_clip(spec, timeline, converter, encoder_for(dest, timeline, info, spec.output), track, job, sheet,
                        lambda f: on_progress(MODEL_DONE + (1 - MODEL_DONE) * f))


def write_crop_clip(timeline: Timeline, converter: Converter, track: list[CropBox | None], job: ClipJob,
                    on_progress: Callable[[float], None]) -> None:
    argv = encode_command(job.video, job.size, job.size, job.fps, codec="libx264", crf=0, preset="ultrafast",
                          pix_fmt="yuv444p")
    pool = FramePool(timeline.layout, 8)
    with FrameWriter(argv, job.size, job.size) as writer, closing(timeline.pictures(pool, len(track))) as pictures:
        for i, pic in enumerate(pictures):
            if (box := track[i]) is not None:
                writer.write(converter.window(pic, box, job.size))
            pool.put(pic)
            if i % 25 == 0:
                on_progress(i / len(track))


def write_speech(dest: Path, audio: np.ndarray, rate: int, fps: float, faces: list[int]) -> None:
    """16-bit mono WAV: the samples under each face frame, in order (silence past the speech's end)."""
    bounds = np.rint(np.arange(max(faces) + 2) * rate / fps).astype(np.int64)
    padded = np.zeros(int(bounds[-1]), np.float32)
    padded[:min(len(audio), len(padded))] = audio[:len(padded)]
    spliced = np.concatenate([padded[bounds[i]:bounds[i + 1]] for i in faces])
    with wave.open(str(dest), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(spliced, -1.0, 1.0) * 32767).astype("<i2").tobytes())


def overlay_clip(spec: LipSyncJobSpec, timeline: Timeline, converter: Converter, encoder_argv: list[str],
                 track: list[CropBox | None], job: ClipJob, sheet: Sheet, on_progress: Callable[[float], None]) -> int:
    pool = FramePool(timeline.layout, 12)
    with PlanarWriter(encoder_argv, pool.put) as writer, closing(_synced_frames(job)) as synced, \
            closing(timeline.pictures(pool, len(track))) as pictures:
        for i, pic in enumerate(pictures):
            if (box := track[i]) is not None:
                before = converter.window(pic, box, TILE) if sheet.wants(i) else None
                converter.blend(pic, box, next(synced), overlay.mouth_mask(box.size, spec.padding)[:, :, 0])
                if before is not None:
                    sheet.add(i, before, converter.window(pic, box, TILE))
            writer.write(pic)
            if i % 25 == 0:
                on_progress(i / len(track))
    return writer.frames


def _synced_frames(job: ClipJob) -> Iterator[np.ndarray]:
    """The model's clip, frame by frame at the crop clip's rate (converted, for a model with its own
    rate), cut to the crop clip's length; ModelFailed if it decodes short."""
    if job.frames == 0:
        return
    argv = decode_command(job.output, fps=job.fps, frames=job.frames)
    count = 0
    try:
        with FrameReader(argv, job.size, job.size, field="the model's output") as reader:
            for count, frame in enumerate(reader, 1):
                yield frame
    except InvalidMedia as e:
        raise ModelFailed(f"the model's output {job.output.name} cannot be decoded: {e.message}",
                          stage="model") from None
    if count < job.frames:
        raise ModelFailed(f"the model's output {job.output.name} decoded to {count} frames, expected {job.frames}",
                          stage="model")
