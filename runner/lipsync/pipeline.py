"""Plans the stages of one job and runs them: fetch → probe → track → infer/overlay → remux → publish.

Data flows one way. Frames stream from one ffmpeg process to another; the only per-frame state
kept for the whole clip is the face track (a few numbers a frame).
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import cpus, log, malloc
from .audio import frame_envelope, load_mono
from .clip import render_clip
from .errors import InvalidMedia, LipSyncError, NoFaceFound
from .io.fetch import fetch, is_remote, local_path, sha256
from .io.probe import AudioInfo, VideoInfo, probe_audio, probe_video
from .io.publish import ARTIFACTS, check_existing, mark_replacing, open_store, publish, refuse_other
from .metrics import Metrics, StageFigures
from .models import ClipModel, FrameModel, check_dependencies, load_model
from .preview import Sheet, pick
from .spec import FaceSpec, LipSyncJob, LipSyncJobSpec
from . import chunks
from . import render as render_engine
from .chunks.render import RenderTask, default_workers, prepared_model, render_chunks, worker_bytes
from .chunks.stitch import MissingChunk, fill_sheet, stitch
from .chunks.workers import run_workers
from .video import track, trackcache
from .render.timeline import SEEKABLE
from .video.decode import FrameReader, analysis_command, decode_command
from .video.remux import audio_plan, remux
from .video.source import source_index

LOW_COVERAGE = 0.5  # a face in fewer frames than this share of the video: the run warns

STAGE_WEIGHTS = {"fetch": 2, "track": 15, "render": 76, "stitch": 2, "remux": 3, "publish": 2}


@dataclass(frozen=True)
class Inputs:
    video: Path
    audio: Path
    weights: Path | None
    checksums: dict[str, str]


@dataclass(frozen=True)
class Plan:
    """The timeline: how many frames the output has, and which source frame each one shows."""

    fps: float
    n_src: int
    n_out: int
    trim_audio_to: float | None  # follow: video with longer speech: cut the speech here

    def order(self) -> list[int]:
        return [source_index(i, self.n_src) for i in range(self.n_out)]


@dataclass
class Result:
    status: str  # "rendered" | "unchanged"
    artifacts: dict[str, str]
    metrics: dict


def resolve(uri: str, base_dir: Path) -> str:
    """Relative local paths in a job file are relative to the file's folder."""
    if is_remote(uri):
        return uri
    p = local_path(uri)
    return os.path.normpath(p if p.is_absolute() else (base_dir / p))


def fetch_media(spec: LipSyncJobSpec, scratch: Path, base_dir: Path) -> tuple[Path, Path, dict[str, str]]:
    video, video_sum = fetch(resolve(spec.video, base_dir), scratch, field="spec.video")
    audio, audio_sum = fetch(resolve(spec.audio, base_dir), scratch, field="spec.audio")
    return video, audio, {"video": video_sum, "audio": audio_sum}


@dataclass(frozen=True)
class Loaded:
    model: FrameModel | ClipModel
    weights: Path | None
    checksum: str | None


def load_weights_and_model(spec: LipSyncJobSpec, scratch: Path, base_dir: Path) -> Loaded:
    """Fetch, hash and load the model (on a worker, beside probe and face track); an error that
    names no stage is the fetch stage's."""
    try:
        weights, checksum = None, None
        if spec.model.weights:
            weights, checksum = fetch_weights(resolve(spec.model.weights, base_dir), scratch)
        return Loaded(load_model(spec, weights), weights, checksum)
    except LipSyncError as e:
        e.stage = e.stage or "fetch"
        raise
    except Exception as e:
        raise LipSyncError(f"unexpected {type(e).__name__}: {e}", stage="fetch") from e


def fetch_weights(uri: str, scratch: Path) -> tuple[Path, str | None]:
    """The weights as a local file or folder, and the file's sha256 (None for a folder)."""
    if uri.startswith("s3://"):
        from .io import s3

        if uri.endswith("/"):
            return s3.download_prefix(uri, scratch / "weights"), None
        cached = s3.download_cached(uri, weights_cache())
        return cached, sha256(cached)
    p = local_path(uri)
    if p.is_dir():
        return p, None
    return fetch(uri, scratch, field="spec.model.weights")


@functools.cache
def weights_cache() -> Path:
    """Where fetched weights are kept for the life of this process (``LIPSYNC_CACHE``, or a
    temporary folder removed at exit): jobs run one after another by one process share it."""
    if os.environ.get("LIPSYNC_CACHE"):
        return Path(os.environ["LIPSYNC_CACHE"])
    folder = Path(tempfile.mkdtemp(prefix="lipsync-weights-", dir=os.environ.get("LIPSYNC_SCRATCH")))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def make_plan(spec: LipSyncJobSpec, video: VideoInfo, audio: AudioInfo, n_src: int) -> Plan:
    fps = float(video.fps)
    video_seconds = n_src / fps
    if spec.timing.follow == "audio":
        n_out = max(1, int(round(audio.duration * fps)))
        return Plan(fps, n_src, n_out, None)
    trim = video_seconds if audio.duration > video_seconds else None
    return Plan(fps, n_src, n_src, trim)


def spec_record(job: LipSyncJob) -> dict:
    """The spec as metrics.json records it (JSON by alias, without output.overwrite): a later run
    of the same job that is refused can then say which fields changed."""
    return job.spec.model_dump(mode="json", by_alias=True, exclude={"output": {"overwrite"}})


def identity(job: LipSyncJob, sums: dict[str, str]) -> dict:
    # what the output depends on: not whether it may overwrite, not how the render is cut up
    spec_json = job.spec.model_dump_json(by_alias=True, exclude={"output": {"overwrite"}, "render": True,
                                                            "parallelism": True})
    return {
        "job": job.metadata.name,
        "namespace": job.metadata.namespace,
        "uid": job.metadata.uid,
        "inputs": sums,
        "spec_sha256": hashlib.sha256(spec_json.encode()).hexdigest(),
    }


def scan_video(video: Path, info: VideoInfo, face: FaceSpec, *, weights: Path | None = None,
               field: str = "spec.video", on_progress: Callable[[float], None] = lambda f: None) -> track.Scan:
    """The track's scan of ``video``: grey analysis frames (the detectors read luma only) on the
    render's own frame grid (start_time), so frame indices agree with the render's."""
    (w, h), scale = track.analysis_size(info.width, info.height)
    threads = cpus.budget() if cpus.constrained() else None
    seekable = any(name in info.container.split(",") for name in SEEKABLE)
    starts = track.segment_starts(info.frames_estimate, float(info.fps), face.detect_every) if seekable else [0]
    if len(starts) > 1:  # a long video: its segments scanned at once (the same track on any machine)
        workers = max(1, min(len(starts), cpus.budget() // 2))  # each: a decoder and a scanning thread
        threads = max(1, cpus.budget() // workers) if workers > 1 or threads else None
        done = [0]
        lock = threading.Lock()

        def read(start: int, count: int | None) -> Iterator[np.ndarray]:
            argv = analysis_command(video, fps=info.fps, start_time=info.start_time, size=(w, h), pix_fmt=info.pix_fmt,
                                    start_frame=start, frames=count, threads=threads)
            with FrameReader(argv, w, h, field=field, channels=1) as reader:
                for k, frame in enumerate(reader, 1):
                    if k % 25 == 0:
                        with lock:
                            done[0] += 25
                            on_progress(min(0.99, done[0] / max(1, info.frames_estimate)))
                    yield frame

        return track.scan_segments(read, starts, scale, face, weights, workers=workers)
    argv = decode_command(video, fps=info.fps, size=(w, h), start_time=info.start_time, pix_fmt="gray",
                          analysis_of=info.pix_fmt, threads=threads)

    with FrameReader(argv, w, h, field=field, channels=1) as reader:
        def frames() -> Iterator[np.ndarray]:
            for i, frame in enumerate(reader):
                if i % 25 == 0:
                    on_progress(min(0.99, i / max(1, info.frames_estimate)))
                yield frame

        return track.scan(frames(), scale, face, weights=weights)


@dataclass(frozen=True)
class Tracked:
    """The track stage's result: the crop box of every source frame (None: passes through), the
    scan they were built from, and whether that scan was computed now or reused from the track
    cache (``cache``: the entry's URI; None without a cache)."""

    boxes: list[track.CropBox | None]
    scan: track.Scan
    reused: bool = False
    cache: str | None = None


def track_faces(spec: LipSyncJobSpec, video: Path, info: VideoInfo, on_progress: Callable[[float], None],
                detector_weights: Path | None = None, *, cache_key: str | None = None,
                scratch: Path | None = None) -> Tracked:
    """Scan ``video`` (or take the scan cached under ``cache_key``) and build its track.

    Raises InvalidMedia when the video decodes to no frames, NoFaceFound when no frame has a
    face; neither is cached."""
    where = trackcache.location() if cache_key is not None else None
    cache = trackcache.TrackCache(where) if where is not None else None
    sc = cache.load(cache_key) if cache is not None and cache_key is not None else None
    reused = sc is not None
    if sc is None:
        sc = scan_video(video, info, spec.face, weights=detector_weights, on_progress=on_progress)
    if sc.frames == 0:
        raise InvalidMedia(f"spec.video {str(video)!r} decoded to no frames: is the file complete?", stage="track")
    boxes = track.build_track(sc, fps=float(info.fps), padding=spec.padding, every=spec.face.detect_every)
    if not any(b is not None for b in boxes):
        raise NoFaceFound(no_face_message(spec.face, sc, "spec.video", "spec.face.index"), stage="track")
    kept = reused or (cache is not None and cache_key is not None
                      and cache.save(cache_key, sc, scratch or Path(tempfile.gettempdir())))
    uri = cache.entry_uri(cache_key) if kept and cache is not None and cache_key is not None else None
    log.event(("face track reused from " if reused else "face track computed" + (", kept in " if uri else ""))
              + (uri or ""), event="track", track="reused" if reused else "computed", cache=uri)
    on_progress(1.0)
    return Tracked(boxes, sc, reused, uri)


def no_face_message(face: FaceSpec, sc: track.Scan, what: str, index_name: str) -> str:
    """Why a scan gave no frame a box, and what to do."""
    if face.select == "index" and sc.most_faces and face.index >= sc.most_faces:
        return (f"{index_name} is {face.index}, but at most {sc.most_faces} face(s) were found in one frame of {what} "
                f"(indices 0-{sc.most_faces - 1}, from the left): give an index in that range")
    return (f"no face was found in any of the {sc.frames} frames of {what}: the speaker must face the camera; "
            "try a clip where the face is larger or better lit")


def track_key(face: FaceSpec, info: VideoInfo, checksums: dict[str, str], base_dir: Path) -> str | None:
    """The track cache key (video.trackcache) of a video with these checksums ("video", and
    "face_weights" when they were fetched) and face settings; None when a local detector weights
    file cannot be read (the scan then says what is wrong with it)."""
    weights_sum = checksums.get("face_weights")
    if face.weights and weights_sum is None:
        local = local_path(resolve(face.weights, base_dir))
        if not local.is_file():
            return None
        weights_sum = sha256(local)
    return trackcache.key(checksums["video"], face, info, weights_sum)


@dataclass(frozen=True)
class RunOptions:
    """How a run uses the machine: ``workers`` processes render chunks (None: automatic, from the
    cores); ``shard`` (index, count) renders only that share of the chunks and publishes nothing
    (one pod of an Indexed Job; a later plain run stitches and publishes)."""

    workers: int | None = None
    shard: tuple[int, int] | None = None


def render_chunked(task: RenderTask, model: FrameModel, options: RunOptions, on_progress: Callable[[float], None],
                   sheet: Sheet, speech: np.ndarray | None = None) -> tuple[int, dict]:
    """Render the chunks of ``task`` not yet finished in its work area (this run's share of them);
    returns (frames rendered, figures for metrics.json)."""
    every = chunks.plan_chunks(task.n_out, float(task.fps), task.spec.render.chunk_seconds)
    mine = chunks.shard(every, *options.shard) if options.shard else every
    work = task.work_area()
    done = work.finished(mine)
    todo = [c for c in mine if c.index not in done]
    if options.workers is None:
        frame_bytes = render_engine.layout_for(task.info.pix_fmt, task.info.bits, task.info.width, task.info.height).frame_bytes
        workers = default_workers(len(todo), worker_bytes(frame_bytes, getattr(model, "uses_torch", False)))
    else:
        workers = max(1, min(options.workers, len(todo)))
    total = sum(c.frames for c in mine) or 1
    finished = [sum(c.frames for c in mine if c.index in done)]

    def chunk_done(c: chunks.Chunk) -> None:
        finished[0] += c.frames
        log.event(f"chunk {c.index} finished (frames {c.first}-{c.last - 1})", event="chunk-done", chunk=c.index)
        on_progress(finished[0] / total)

    if todo and workers <= 1:
        render_chunks(task, todo, prepared_model(task, model, speech), on_frames=lambda n: on_progress((finished[0] + n) / total),
                      on_chunk=chunk_done, sheet=sheet)
    elif todo:
        shares = [todo[k * len(todo) // workers:(k + 1) * len(todo) // workers] for k in range(workers)]
        run_workers(task, shares, chunk_done)
    on_progress(1.0)
    stats = {"count": len(every), "mine": len(mine), "reused": len(mine) - len(todo), "rendered": len(todo),
             "workers": workers if todo else 0, "seconds": task.spec.render.chunk_seconds}
    log.event(f"chunks: {stats['rendered']} rendered, {stats['reused']} reused of {len(mine)}", event="chunks", **stats)
    return sum(c.frames for c in todo), stats


def stitch_chunks(task: RenderTask, model: FrameModel, dest: Path) -> None:
    """Join every chunk into ``dest``; a chunk gone missing since (or corrupt) is rendered again here."""
    every = chunks.plan_chunks(task.n_out, float(task.fps), task.spec.render.chunk_seconds)
    work = task.work_area()
    for _ in range(len(every) + 1):
        try:
            stitch(work, every, task.fps, task.spec.output.video_codec, task.scratch, dest)
            return
        except MissingChunk as e:
            log.event(f"chunk {e.chunk.index} is missing or damaged: rendering it again", event="chunk-redo")
            render_chunks(task, [e.chunk], prepared_model(task, model))
    raise LipSyncError("chunks kept going missing from the work area while stitching", stage="stitch")


def collect_tiles(task: RenderTask, sheet: Sheet) -> None:
    """The preview tiles this process did not cut (chunks rendered by workers, other pods or an
    earlier run), from the chunks' own tiles in the work area."""
    missing = sheet.wanted - {t[0] for t in sheet.tiles}
    work = task.work_area()
    for c in chunks.plan_chunks(task.n_out, float(task.fps), task.spec.render.chunk_seconds):
        if any(c.first <= i < c.last for i in missing):
            for tile in work.tiles(c):
                if tile[0] in missing:
                    sheet.add(*tile)
                    missing.discard(tile[0])


def run_job(job: LipSyncJob, *, base_dir: Path = Path("."), force: bool = False, bar: bool = False,
            options: RunOptions = RunOptions()) -> Result:
    """Render one job end to end and publish its artifacts."""
    spec = job.spec
    metrics = Metrics()
    progress = log.Progress(job.metadata.name, STAGE_WEIGHTS, bar=bar)
    root = os.environ.get("LIPSYNC_SCRATCH")
    with tempfile.TemporaryDirectory(prefix="lipsync-", dir=root) as tmp:
        scratch = Path(tmp)
        run_log = logging.FileHandler(scratch / "run.log")
        run_log.setFormatter(log.JsonFormatter())
        log.LOG.addHandler(run_log)
        if log.LOG.level == logging.NOTSET:  # called as a library, without log.setup()
            log.LOG.setLevel(logging.INFO)
        metrics.memory.start()
        try:
            return _run(job, spec, scratch, base_dir, force, metrics, progress, options)
        except LipSyncError as e:
            cause = e.__cause__ if e.reason == "InternalError" else None  # a traceback for the unexpected
            log.LOG.error(str(e), exc_info=cause, extra={"fields": {
                "event": "failed", "job": job.metadata.name, "stage": e.stage, "reason": e.reason}})
            raise
        finally:
            metrics.memory.stop()
            progress.close()
            log.LOG.removeHandler(run_log)
            run_log.close()


@contextmanager
def stage(metrics: Metrics, name: str) -> Iterator[StageFigures]:
    """Time a stage, and name it in any error raised inside: one without a stage gets this one,
    and an unexpected exception becomes an InternalError (retried) that says where it happened."""
    try:
        with metrics.stage(name) as fig:
            yield fig
    except LipSyncError as e:
        e.stage = e.stage or name
        raise
    except Exception as e:
        raise LipSyncError(f"unexpected {type(e).__name__}: {e}", stage=name) from e


def _run(job: LipSyncJob, spec: LipSyncJobSpec, scratch: Path, base_dir: Path, force: bool,
         metrics: Metrics, progress: log.Progress, options: RunOptions) -> Result:
    name = job.metadata.name
    log.event(f"job {name}: {spec.model.name} model", event="start", job=name, output=spec.output.uri)

    with ThreadPoolExecutor(1, thread_name_prefix="weights") as loader:
        return _stages(job, spec, scratch, base_dir, force, metrics, progress, loader, options)


def _stages(job: LipSyncJob, spec: LipSyncJobSpec, scratch: Path, base_dir: Path, force: bool,
            metrics: Metrics, progress: log.Progress, loader: ThreadPoolExecutor, options: RunOptions) -> Result:
    name = job.metadata.name
    loading: Future[Loaded] | None = None
    verdict: str = "absent"
    found: dict | None = None

    def settle() -> tuple[FrameModel | ClipModel, Inputs, dict]:
        """Wait for the model; with its checksum the job's identity is complete."""
        assert loading is not None
        loaded = loading.result()
        sums = dict(checksums)
        if loaded.checksum is not None:
            sums["weights"] = loaded.checksum
        return loaded.model, Inputs(video, audio, loaded.weights, sums), identity(job, sums)

    with stage(metrics, "fetch"):
        check_dependencies(spec)  # before any download: a runner without torch cannot run wav2lip
        store = open_store(resolve(spec.output.uri, base_dir))
        video, audio, checksums = fetch_media(spec, scratch, base_dir)
        detector_weights = None
        if spec.face.weights and is_remote(spec.face.weights):  # the face detector's own weights (YuNet)
            detector_weights, face_sum = fetch_weights(resolve(spec.face.weights, base_dir), scratch)
            if face_sum is not None:
                checksums["face_weights"] = face_sum
        # Weights are fetched, hashed and loaded while the media is probed and tracked.
        loading = loader.submit(load_weights_and_model, spec, scratch, base_dir)
        if store.get("metrics.json") is not None:  # something is there: the whole identity decides now
            model, inputs, ident = settle()
            verdict, found = check_existing(store, ident)
            if verdict == "same-job" and not force:
                return Result("unchanged", (found or {}).get("artifacts") or {}, found or {})
            if verdict == "other-job" and not (force or spec.output.overwrite):
                raise refuse_other(store, found, ident, spec_record(job))
        video_info = probe_video(video)
        audio_info = probe_audio(audio)
    progress.update("fetch", 1.0)

    with stage(metrics, "track") as fig:
        tracked = track_faces(spec, video, video_info, lambda f: progress.update("track", f), detector_weights,
                              cache_key=track_key(spec.face, video_info, checksums, base_dir), scratch=scratch)
        boxes, sc = tracked.boxes, tracked.scan
        fig.frames = 0 if tracked.reused else sc.frames
        plan = make_plan(spec, video_info, audio_info, sc.frames)
        order = plan.order()
        log.event(f"planned {plan.n_out} output frames from {plan.n_src} at {plan.fps:.3f} fps", event="plan",
                  job=name, faces=sum(b is not None for b in boxes), cuts=len(sc.cuts),
                  detector_calls=0 if tracked.reused else sc.detector_calls)
        with_face = sum(b is not None for b in boxes)
        if with_face < LOW_COVERAGE * len(boxes):
            log.event(f"a face was found in only {with_face} of {len(boxes)} frames ({100 * with_face / len(boxes):.0f} %): "
                      "the others pass through untouched; `lipsync track --overlay` shows what was found "
                      "(spec.face: a smaller or turned face, another person selected?)", logging.WARNING,
                      event="low-face-coverage", job=name, frames_with_face=with_face, frames=len(boxes))

    with stage(metrics, "fetch"):
        model, inputs, ident = settle()
        if verdict == "absent":  # nothing was there when we looked: look again with the whole identity
            verdict, found = check_existing(store, ident)
            if verdict == "same-job" and not force:
                return Result("unchanged", (found or {}).get("artifacts") or {}, found or {})
            if verdict == "other-job" and not (force or spec.output.overwrite):
                raise refuse_other(store, found, ident, spec_record(job))

    video_only = scratch / "encoded.mp4"
    timeline = render_engine.timeline_for(inputs.video, video_info, plan.n_src)
    speech = load_mono(inputs.audio, model.audio_rate)
    loudness = frame_envelope(speech, model.audio_rate, plan.fps, plan.n_out) if spec.output.preview else None
    sheet = Sheet(pick(boxes, order, energy=loudness) if spec.output.preview else [])
    on_render = lambda f: progress.update("render", f)  # noqa: E731
    if isinstance(model, ClipModel):
        with stage(metrics, "render") as fig:
            fig.frames = render_clip(spec, model, timeline, video_info, plan.n_out, boxes, speech, scratch / "clip",
                                     video_only, sheet, on_render)
    else:
        task = RenderTask(spec, inputs.video, inputs.audio, inputs.weights, video_info, plan.n_src, plan.n_out,
                          video_info.fps, boxes, "", chunks.work_key(ident, spec.render.chunk_seconds),
                          scratch / "chunks", tuple(sorted(sheet.wanted)))
        task = replace(task, work_uri=f"{store.uri.rstrip('/')}/.work-{task.work_key}")
        with stage(metrics, "render") as fig:
            fig.frames, stats = render_chunked(task, model, options, on_render, sheet, speech)
            metrics.extra["chunks"] = stats
        if options.shard is not None:  # this pod's share is rendered; the stitch step publishes
            return Result("partial", {}, metrics.as_dict())
        with stage(metrics, "stitch") as fig:
            stitch_chunks(task, model, video_only)
            fig.frames = plan.n_out
            collect_tiles(task, sheet)
            if sheet.wanted - {t[0] for t in sheet.tiles}:  # chunks from an older runner: cut from the file
                rendered = render_engine.timeline_for(video_only, probe_video(video_only), plan.n_out)
                fill_sheet(sheet, timeline, rendered, render_engine.converter_for(timeline, video_info), boxes, order)
        progress.update("stitch", 1.0)

    carry = audio_plan(audio_info)  # output.mp4, or output.mov where MP4 cannot hold the speech exactly
    output = scratch / carry.filename
    with stage(metrics, "remux"):
        if carry.note:
            log.event(carry.note, logging.WARNING, event="audio-carried", job=name, **carry.as_dict())
        remux(video_only, inputs.audio, output, plan=carry, duration=plan.trim_audio_to)
    progress.update("remux", 1.0)

    with stage(metrics, "publish"):
        with_face = sum(boxes[s] is not None for s in order)
        metrics.extra.update({
            "identity": ident,
            "spec": spec_record(job),
            "model": spec.model.name,
            "runtime": {"glibc_tunables": malloc.tunables()},
            "video": {"width": video_info.width, "height": video_info.height, "fps": plan.fps,
                      "variable_rate": video_info.variable_rate, "rotation": video_info.rotation,
                      "source_frames": plan.n_src},
            "audio": {"codec": audio_info.codec, "sample_rate": audio_info.sample_rate,
                      "channels": audio_info.channels, "duration_s": round(audio_info.duration, 4),
                      "sample_format": audio_info.sample_fmt, "duration_from": audio_info.duration_from,
                      "carried": carry.as_dict()},
            "output": {"frames": plan.n_out, "duration_s": round(plan.n_out / plan.fps, 4)},
            "face_track": {"frames_with_face": with_face, "frames_without_face": plan.n_out - with_face,
                           "detector_calls": 0 if tracked.reused else sc.detector_calls, "shots": len(sc.cuts),
                           "box_jitter": track.jitter(boxes),
                           "track": "reused" if tracked.reused else "computed", "cache": tracked.cache},
        })
        (scratch / "track.json").write_text(json.dumps(track.to_json(
            sc, boxes, width=video_info.width, height=video_info.height, fps=float(video_info.fps),
            face=spec.face, padding=spec.padding)))
        files = {carry.filename: output, "track.json": scratch / "track.json"}
        if sheet.write(scratch / "preview.jpg", plan.fps):
            files["preview.jpg"] = scratch / "preview.jpg"
        if verdict != "absent":  # replacing a render: it must stop looking finished before any file changes
            mark_replacing(store, ident, scratch)
        meta = {"job": name, "uid": job.metadata.uid or "", "model": spec.model.name,
                **{f"sha256-{k}": v for k, v in inputs.checksums.items()}}
        artifacts = {ARTIFACTS[n][0]: f"{store.uri.rstrip('/')}/{n}" for n in [*files, "run.log", "metrics.json"]}
        metrics.extra["artifacts"] = artifacts
        log.event(f"{plan.n_out} frames ready to publish", event="render-done", job=name, **metrics.as_dict()["stages"]["render"])
        files["run.log"] = scratch / "run.log"
        publish(store, files, meta)
    # metrics.json last, once the publish stage's own figures are in it: it marks the render finished
    (scratch / "metrics.json").write_text(json.dumps(metrics.as_dict(), indent=2))
    with stage(metrics, "publish"):
        publish(store, {"metrics.json": scratch / "metrics.json"}, meta)
    if "chunks" in metrics.extra:  # published: the work area has served its purpose
        try:
            task.work_area().clean(chunks.plan_chunks(plan.n_out, float(plan.fps), spec.render.chunk_seconds))
        except LipSyncError as e:  # the render is published; stale chunks are only storage
            log.event(f"could not remove the work area: {e}", logging.WARNING, event="cleanup-failed")
    progress.update("publish", 1.0)
    return Result("rendered", artifacts, metrics.as_dict())

