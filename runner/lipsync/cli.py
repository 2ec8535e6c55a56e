"""`lipsync`: run, validate and describe LipSyncJobs without a cluster (thin: parse, call, print)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from . import cpus, credentials, log, malloc, policy
from .malloc import MALLOC_TUNABLES  # noqa: F401 - where tests and docs look for it
from .errors import REASONS, InputNotFound, InvalidSpec, LipSyncError
from .extras import require_torch
from .redact import redact
from .spec import LipSyncJob, iter_job_files, load_jobs, parse_job


RESULT_LIMIT = 4096  # bytes: the kubelet truncates a termination message beyond this


def result_text(payload: dict, limit: int = RESULT_LIMIT) -> str:
    """The result JSON, credentials redacted, always parseable and at most ``limit`` bytes.

    ASCII-only JSON (so characters are bytes). Too long: the message is shortened first (its end
    kept: that is where an error says what failed); if the artifact URIs alone are too long they
    are left out (the operator then keeps the artifacts it knows).
    """
    payload = {**payload, "message": redact(payload.get("message") or "")}
    for candidate in (payload, {**payload, "artifacts": {}}):
        text = _shorten_to_fit(candidate, limit)
        if text is not None:
            return text
    return json.dumps({"phase": payload.get("phase"), "reason": payload.get("reason"), "message": "", "artifacts": {}})


def _shorten_to_fit(payload: dict, limit: int) -> str | None:
    """The payload as JSON of at most ``limit`` bytes, its message cut from the front ("..." +
    the end); None if it does not fit even with an empty message."""
    message = payload["message"]
    text = json.dumps(payload, ensure_ascii=True)
    if len(text) <= limit:
        return text
    keep = min(len(message), limit)  # each character takes at least one byte
    while keep > 0:
        kept = "..." + message[-keep:]
        text = json.dumps({**payload, "message": kept}, ensure_ascii=True)
        over = len(text) - limit
        if over <= 0:
            return text
        per_char = len(json.dumps(kept, ensure_ascii=True)) / len(kept)  # 1 for ASCII, up to 12 escaped
        keep -= max(1, int(over / per_char) + 1)
    text = json.dumps({**payload, "message": ""}, ensure_ascii=True)
    return text if len(text) <= limit else None


def _write_result(payload: dict) -> None:
    """The runner's last word for the operator (the pod's termination message): see :func:`result_text`."""
    path = os.environ.get("LIPSYNC_RESULT_FILE")
    if path:
        Path(path).write_text(result_text(payload))


def _jobs_from_args(args: argparse.Namespace) -> list[tuple[LipSyncJob, Path]]:
    if args.job_env:
        raw = os.environ.get(args.job_env)
        if not raw:
            raise InvalidSpec(f"environment variable {args.job_env} is empty: it must hold the job as JSON",
                              stage="validate")
        try:
            doc = json.loads(raw)
        except ValueError as e:
            raise InvalidSpec(f"{args.job_env} is not JSON: {e}", stage="validate") from None
        job = parse_job(doc, source=args.job_env)
        if policy.in_cluster():  # the operator's Job: the author is not trusted (lipsync.policy)
            policy.check(job.spec, policy.ClusterPolicy.from_env(), namespace=job.metadata.namespace)
        return [(job, Path.cwd())]
    return [(job, f.parent) for f in iter_job_files(args.files) for job in load_jobs(f, only_jobs=True)]


def cmd_run(args: argparse.Namespace) -> int:
    fmt = log.setup(args.log_format)
    try:
        jobs = _jobs_from_args(args)
    except LipSyncError as e:
        log.event(str(e), logging.ERROR, event="failed", reason=e.reason, stage=e.stage)
        _write_result({"phase": "Failed", "reason": e.reason, "message": str(e), "artifacts": {}})
        return e.exit_code
    if not jobs:
        log.event("no LipSyncJob found in the files given", logging.ERROR, event="failed")
        return REASONS["InvalidSpec"].exit_code
    from .pipeline import RunOptions, run_job

    try:
        options = RunOptions(workers=_workers(args.workers), shard=_shard(args.shard))
    except InvalidSpec as e:
        log.event(str(e), logging.ERROR, event="failed", reason=e.reason)
        return e.exit_code
    first_failure = 0
    for job, base in jobs:
        try:
            result = run_job(job, base_dir=base, force=args.force, bar=fmt == "text" and sys.stderr.isatty(),
                             options=options)
        except LipSyncError as e:
            # The result first: with it written, the kubelet never falls back to the log's tail
            # (FallbackToLogsOnError) for the termination message, and the log below may hold a
            # model program's last lines (the log only, never the result: status, Events).
            _write_result({"phase": "Failed", "reason": e.reason, "message": str(e), "artifacts": {}})
            detail = getattr(e, "detail", None)
            if detail:
                log.event(f"the model program's last output:\n{redact(detail)}", logging.ERROR,
                          event="model-output-tail", job=job.metadata.name)
            first_failure = first_failure or e.exit_code
            continue
        verb = {"unchanged": "unchanged", "partial": "chunks rendered"}.get(result.status, "done")
        log.event(f"{job.metadata.name}: {verb}: {result.artifacts.get('video', '')}", event=result.status,
                  job=job.metadata.name, artifacts=result.artifacts)
        _write_result({"phase": "Succeeded", "reason": None, "message": verb, "artifacts": result.artifacts})
    return first_failure  # the exit status of the first job that failed, 0 if none


def _workers(value: str) -> int | None:
    if value == "auto":
        return None
    if not value.isdigit() or int(value) < 1:
        raise InvalidSpec(f"--workers {value!r}: give a number of processes (1 or more) or 'auto'", stage="validate")
    return int(value)


def _shard(value: str | None) -> tuple[int, int] | None:
    """``INDEX/COUNT``; ``auto/COUNT`` takes INDEX from JOB_COMPLETION_INDEX (an Indexed Job's pod)."""
    if value is None:
        return None
    index, _, count = value.partition("/")
    if index == "auto":
        index = os.environ.get("JOB_COMPLETION_INDEX", "")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise InvalidSpec(f"--shard {value!r}: give INDEX/COUNT with 0 <= INDEX < COUNT (or auto/COUNT in an "
                          "Indexed Job's pod)", stage="validate")
    return int(index), int(count)


def cmd_validate(args: argparse.Namespace) -> int:
    failed = 0
    count = 0
    for f in iter_job_files(args.files):
        try:
            jobs = load_jobs(f, only_jobs=True)
        except LipSyncError as e:
            print(f"FAIL {e.message}", file=sys.stderr)
            failed += 1
            continue
        for job in jobs:
            count += 1
            print(f"ok   {f}: {job.metadata.name} ({job.spec.model.name})")
    if failed:
        return REASONS["InvalidSpec"].exit_code
    if count == 0:
        print("no LipSyncJob found", file=sys.stderr)
        return REASONS["InvalidSpec"].exit_code
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .sample import make_sample

    video, speech = make_sample(Path(args.folder))
    print(f"wrote {video} and {speech}")
    return 0


def cmd_crd(args: argparse.Namespace) -> int:
    from .crd import crd_yaml

    sys.stdout.write(crd_yaml())
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """A check of a finished render, apart from `run`: it needs SyncNet weights the user brings."""
    try:
        require_torch("lipsync score", stage="score")
        from .score import score_video

        result = score_video(Path(args.video), Path(args.weights), audio=Path(args.audio) if args.audio else None)
    except LipSyncError as e:
        print(str(e), file=sys.stderr)
        return e.exit_code
    if args.json:
        print(json.dumps(result))
    else:
        print(f"LSE-D {result['lse_d']:.3f}  LSE-C {result['lse_c']:.3f}  best offset {result['best_offset']:+d} frames"
              f" (positive: audio leads)  {result['windows']} windows of {result['frames']} frames")
    return 0


def cmd_track(args: argparse.Namespace) -> int:
    """The face track of a video, as a render would find it, without rendering: see what the crop will be."""
    from pydantic import ValidationError

    from .io.probe import probe_video
    from .io.fetch import sha256
    from .pipeline import scan_video, track_key
    from .spec import FaceSpec
    from .video import track, trackcache

    try:
        select = args.select or ("index" if args.index is not None else None)  # --index alone means by position
        try:
            face = FaceSpec.model_validate({k: v for k, v in {
                "select": select, "index": args.index, "detector": args.detector, "weights": args.weights,
                "detectEvery": args.detect_every, "padding": args.padding}.items() if v is not None})
        except ValidationError as e:
            raise InvalidSpec("; ".join(_flag_error(err) for err in e.errors()), stage="track") from None
        if "://" in args.video:
            raise InvalidSpec(f"lipsync track reads a local video file, not {args.video!r}: download it first "
                              "(lipsync run fetches https:// and s3:// inputs itself)", stage="track")
        if not args.video.strip():
            raise InvalidSpec("give the video file to track", stage="track")
        video = Path(args.video)
        if not video.is_file():
            raise InputNotFound(f"video {str(video)!r} does not exist or is not a file", stage="track")
        if args.weights and not Path(args.weights).is_file():
            raise InputNotFound(f"--weights {args.weights!r} does not exist or is not a file", stage="track")
        _check_destinations(video, {"--json": args.json, "--overlay": args.overlay})
        info = probe_video(video, field="video")
        where = trackcache.location()  # a render of this video afterwards reuses this scan, and back
        key = track_key(face, info, {"video": sha256(video)}, Path.cwd()) if where is not None else None
        cache = trackcache.TrackCache(where) if where is not None and key is not None else None
        cached = cache.load(key) if cache is not None and key is not None else None
        sc = cached or scan_video(video, info, face, field="video")
        padding = face.padding if face.padding is not None else 0.25
        boxes = track.build_track(sc, fps=float(info.fps), padding=padding, every=face.detect_every)
        kept = False
        if cache is not None and key is not None and cached is None and any(b is not None for b in boxes):
            with tempfile.TemporaryDirectory() as tmp:
                kept = cache.save(key, sc, Path(tmp))
        source = (f"reused from {cache.entry_uri(key)}" if cached is not None and cache is not None and key else
                  f"computed, kept in {cache.entry_uri(key)}" if kept and cache is not None and key else "computed")
    except LipSyncError as e:
        print(str(e), file=sys.stderr)
        return e.exit_code
    if args.overlay:
        try:
            _draw_track(video, info, boxes, Path(args.overlay))
        except LipSyncError as e:
            print(str(e), file=sys.stderr)
            return e.exit_code
    doc = track.to_json(sc, boxes, width=info.width, height=info.height, fps=float(info.fps), face=face, padding=padding)
    if args.json == "-":
        print(json.dumps(doc))
    elif args.json:
        tmp = Path(args.json).with_name(Path(args.json).name + ".tmp")
        try:
            tmp.write_text(json.dumps(doc))
            tmp.replace(args.json)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            err = InvalidSpec(f"could not write --json {args.json!r}: {e.strerror or e}", stage="track")
            print(str(err), file=sys.stderr)
            return err.exit_code
    found = sum(b is not None for b in boxes)
    calls = "no detector calls (reused)" if cached is not None else (
        f"{sc.detector_calls} detector calls ({sc.searches} whole-frame searches)")
    summary = (f"track {source}: {found} of {sc.frames} frames have a face box; {len(sc.cuts)} shot(s); {calls}; "
               f"jitter {doc['jitter']} (mean box movement a frame, in box sides)"
               + (f"; written to {args.json}" if args.json and args.json != "-" else "")
               + (f"; drawn in {args.overlay}" if args.overlay else ""))
    print(summary, file=sys.stderr if args.json == "-" else sys.stdout)
    if not found:
        from .pipeline import no_face_message

        print(no_face_message(face, sc, repr(str(video)), "--index"), file=sys.stderr)
    return 0


_FLAGS = {"select": "--select", "index": "--index", "detector": "--detector", "weights": "--weights",
          "detectEvery": "--detect-every", "padding": "--padding"}


def _flag_error(err: dict) -> str:
    """A face settings error in the words of ``lipsync track``'s own options."""
    msg = str(err["msg"]).removeprefix("Value error, ")
    for field, flag in (("spec.face.weights", "--weights"), ("spec.face.index", "--index"),
                        ("select: index", "--select index"), ("detector: yunet", "--detector yunet"),
                        ("leave index out", "leave --index out")):
        msg = msg.replace(field, flag)
    loc = [str(p) for p in err.get("loc", ())]
    return f"{_FLAGS.get(loc[0], '--' + loc[0])}: {msg}" if loc else msg


def _check_destinations(video: Path, dests: dict[str, str | None]) -> None:
    """Refuse before any work an output file that is the video itself, or that cannot be written."""
    seen: dict[Path, str] = {}
    for flag, dest in dests.items():
        if not dest or dest == "-":
            continue
        path = Path(dest)
        if path.exists() and path.resolve() == video.resolve():
            raise InvalidSpec(f"{flag} {dest!r} is the video itself: give another file (nothing was written)", stage="track")
        if path.resolve() in seen:
            raise InvalidSpec(f"{flag} and {seen[path.resolve()]} are the same file {dest!r}: give two", stage="track")
        seen[path.resolve()] = flag
        if path.is_dir():
            raise InvalidSpec(f"{flag} {dest!r} is a folder: give a file name", stage="track")
        if not path.parent.is_dir():
            raise InvalidSpec(f"{flag} {dest!r}: the folder {str(path.parent)!r} does not exist", stage="track")
        if flag == "--overlay" and path.suffix.lower() != ".mp4":
            raise InvalidSpec(f"--overlay writes an MP4 file: give a name ending in .mp4, not {dest!r}", stage="track")


def _draw_track(video: Path, info, boxes: list, dest: Path) -> None:
    """The video with its track drawn on every frame (H.264, no sound), written beside and renamed."""
    import subprocess

    import numpy as np

    from .errors import EncodeFailed
    from .video import track
    from .video.decode import FrameReader, decode_command

    tmp = dest.with_name(dest.name + ".tmp.mp4")
    w, h = info.width, info.height
    enc = subprocess.Popen(["ffmpeg", "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{w}x{h}",
                            "-r", str(info.fps), "-i", "pipe:", "-c:v", "libx264", "-preset", "veryfast", "-crf", "20",
                            "-pix_fmt", "yuv420p", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", str(tmp)],
                           stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert enc.stdin is not None
    try:
        with FrameReader(decode_command(video, fps=info.fps, start_time=info.start_time), w, h, field="video") as reader:
            for i, frame in enumerate(reader):
                enc.stdin.write(track.draw(np.array(frame), boxes[i] if i < len(boxes) else None).tobytes())
    except BrokenPipeError:
        pass
    finally:
        enc.stdin.close()
        err = enc.stderr.read().decode(errors="replace") if enc.stderr else ""
    if enc.wait() != 0:
        tmp.unlink(missing_ok=True)
        raise EncodeFailed(f"ffmpeg could not write --overlay {str(dest)!r}: {err.strip()[-300:]}", stage="track")
    tmp.replace(dest)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lipsync", description="Lip-sync rendering: LipSyncJob YAML in, video out.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="render the jobs in YAML files or folders")
    run.add_argument("files", nargs="*", help="LipSyncJob YAML files (multi-document) or folders of them")
    run.add_argument("--job-env", metavar="VAR", help="read one job as JSON from this environment variable (pods)")
    run.add_argument("--force", action="store_true", help="render again and replace a finished render at the output")
    run.add_argument("--log-format", choices=["auto", "text", "json"], default="auto")
    run.add_argument("--workers", default="auto",
                     help="processes rendering chunks at once (default auto: one per 4 cores, LIPSYNC_WORKERS)")
    run.add_argument("--shard", metavar="INDEX/COUNT",
                     help="render only this share of the chunks and publish nothing (a pod of an Indexed Job; "
                          "auto/COUNT reads JOB_COMPLETION_INDEX); a later plain run stitches and publishes")
    run.set_defaults(func=cmd_run)

    val = sub.add_parser("validate", help="check job files against the schema without running them")
    val.add_argument("files", nargs="+")
    val.set_defaults(func=cmd_validate)

    crd = sub.add_parser("crd", help="print the LipSyncJob CustomResourceDefinition (generated from the schema)")
    crd.set_defaults(func=cmd_crd)

    smp = sub.add_parser("sample", help="make the sample clip and speech used by examples/job.yaml")
    smp.add_argument("folder", nargs="?", default="sample")
    smp.set_defaults(func=cmd_sample)

    sc = sub.add_parser("score", help="lip-sync scores (LSE-D, LSE-C, offset) of a video with SyncNet weights")
    sc.add_argument("video")
    sc.add_argument("--weights", required=True, help="Wav2Lip's SyncNet expert, lipsync_expert.pth")
    sc.add_argument("--audio", help="score against this speech instead of the video's own audio stream")
    sc.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    sc.set_defaults(func=cmd_score)

    tr = sub.add_parser("track", help="the face track of a video (boxes, landmarks, cuts) without rendering")
    tr.add_argument("video")
    tr.add_argument("--json", metavar="FILE", help="write the per-frame boxes, landmarks and shot cuts here")
    tr.add_argument("--overlay", metavar="FILE", help="write the video with the boxes, landmarks and mouth drawn (MP4)")
    tr.add_argument("--select", choices=["largest", "index"], help="as spec.face.select (default largest)")
    tr.add_argument("--index", type=int, help="as spec.face.index")
    tr.add_argument("--detector", choices=["haar", "haar-alt2", "yunet"], help="as spec.face.detector (default haar)")
    tr.add_argument("--weights", help="as spec.face.weights: the YuNet ONNX file (a local path)")
    tr.add_argument("--detect-every", type=int, help="as spec.face.detectEvery (default 5)")
    tr.add_argument("--padding", type=float, help="as spec.face.padding (default 0.25)")
    tr.set_defaults(func=cmd_track)
    return p


def _version() -> str:
    """The installed distribution's version (pyproject.toml), or "unknown" in a bare checkout."""
    try:
        return metadata.version("lipsync-operator")
    except metadata.PackageNotFoundError:
        return "unknown"


class Terminated(BaseException):
    """SIGTERM arrived (Kubernetes evicting or preempting the pod): unwind, clean up, exit 143.

    A BaseException, like KeyboardInterrupt, so no stage mistakes it for its own failure: every
    ``with`` on the way out stops its threads and ffmpeg children, and nothing is published."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated(signum)


def _tune_malloc(argv: list[str]) -> None:
    """``run`` and ``score`` start again with the model's malloc settings (see ``lipsync.malloc``)."""
    if sys.platform != "linux" or not argv or argv[0] not in ("run", "score"):
        return
    if "GLIBC_TUNABLES" not in os.environ:
        os.environ["GLIBC_TUNABLES"] = MALLOC_TUNABLES
        os.execv(sys.executable, [sys.executable, "-m", "lipsync.cli", *argv])
    malloc.adopt()  # started with them: the ffmpeg children do not inherit them


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the command line itself (not a call from Python)
        _tune_malloc(sys.argv[1:])
        if policy.in_cluster():  # a job's own program may run as this user: nothing it can read holds a secret
            credentials.confine()
        cpus.apply_to_libraries()  # a pod given fewer cores than its node has: size the pools to them
    args = parser().parse_args(argv)
    if args.command == "run" and not args.files and not args.job_env:
        parser().error("run: give job files or --job-env")
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.func(args)
    except Terminated:
        print("lipsync: stopped by SIGTERM: nothing was published", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback; the same unwinding as SIGTERM
        print(f"lipsync {args.command}: interrupted (Ctrl-C)", file=sys.stderr)
        return 128 + signal.SIGINT
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
