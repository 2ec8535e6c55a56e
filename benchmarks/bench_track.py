"""Face-track benchmark: the current detector against the one before it, side by side in one run.

    .venv/bin/python benchmarks/bench_track.py              # 1080p, 10 s clips (a few minutes on 2 cores)
    .venv/bin/python benchmarks/bench_track.py --quick      # 4 s clips, fewer placements
    .venv/bin/python benchmarks/bench_track.py --yunet face_detection_yunet_2023mar.onnx   # adds YuNet

Prints:
1. track-pass frames/s at 1080p on CPU (``scan`` + ``build_track`` over the analysis frames the
   render engine feeds, at the default detection interval), now ÷ before, for a presenter clip
   (the sample's drifting face) and for a clip with no face (the worst case: a whole-frame search
   at every keyframe);
2. the found-face rate on a size sweep, the face 2 %–30 % of the 1080p frame's longer side, at
   random places on the sample's background (a hit: a box centred within a quarter of the face's
   side of the true centre), and the false faces found on the bare background;
2b. the found-face rate toward profile: the photograph turned about its vertical axis (a card:
   foreshortening, not the far eye hidden as a real head hides it), 0°–80°;
3. ``build_track`` seconds for a 5-minute and a 60-minute scan (linear: the ratio is about 12);
4. a long video's whole track stage (``pipeline.scan_video``: decode + scan) in one pass against
   its 30 s segments scanned at once (``track.scan_segments``, one per two cores), wall and CPU
   seconds, paired (``--long`` seconds of 1080p; 0 skips it).

"Before" is the track module as it was at commit ``BEFORE`` (Haar on a 640 px BGR copy), read
from this repository's history, so both run on the same machine in the same minute.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "runner"))

from lipsync.sample import _place, astronaut, background, drift  # noqa: E402
from lipsync.spec import FaceSpec  # noqa: E402
from lipsync.video import track  # noqa: E402

BEFORE = "84b4012"  # main just before the new detector landed
W, H, FPS = 1920, 1080, 25.0
FACE_IN_CROP = (116, 66, 95)  # the astronaut's face box (x, y, side) in sample.astronaut()'s crop


def before_module() -> ModuleType:
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{BEFORE}:runner/lipsync/video/track.py"],
                         check=True, capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader("lipsync.video.track_before", loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "lipsync.video"
    sys.modules[spec.name] = mod
    exec(compile(src, "track_before.py", "exec"), mod.__dict__)  # noqa: S102 - this repository's own code
    return mod


def presenter(seconds: float, with_face: bool) -> list[np.ndarray]:
    """1080p BGR frames: the sample's drifting astronaut (30 % of the width) or the bare background."""
    face, bg = astronaut(), background(W, H)
    out = []
    for i in range(int(seconds * FPS)):
        f = bg.copy()
        if with_face:
            _place(f, face, *drift(i / FPS), 0.30 * W)
        out.append(f)
    return out


def analysis_frames(frames: list[np.ndarray], mod: ModuleType, grey: bool) -> tuple[list[np.ndarray], float]:
    (w, h), scale = mod.analysis_size(W, H)
    out = []
    for f in frames:
        small = cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA)
        out.append(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if grey else small)
    return out, scale


def track_fps(mod: ModuleType, frames: list[np.ndarray], scale: float, face: FaceSpec, **kw) -> tuple[float, int]:
    t0 = time.perf_counter()
    sc = mod.scan(iter(frames), scale, face, **kw)
    boxes = mod.build_track(sc, fps=FPS, padding=0.25, every=face.detect_every)
    return len(frames) / (time.perf_counter() - t0), sum(b is not None for b in boxes)


def place(canvas: np.ndarray, side: float, cx: float, cy: float) -> None:
    img = astronaut()
    fx, fy, fs = FACE_IN_CROP
    k = side / fs
    ccx, ccy = cx - (fx + fs / 2 - img.shape[1] / 2) * k, cy - (fy + fs / 2 - img.shape[0] / 2) * k
    _place(canvas, img, ccx / W, ccy / H, 1.0, img.shape[1] * k)


def found_rate(detect, sizes: list[float], tries: int, seed: int = 1) -> list[float]:
    rng = np.random.default_rng(seed)
    bg = background(W, H)
    rates = []
    for frac in sizes:
        side = frac * W
        hits = 0
        for _ in range(tries):
            # the whole head inside the frame
            cx = rng.uniform(1.2 * side, W - 1.2 * side) if W > 2.4 * side else W / 2
            cy = rng.uniform(1.0 * side, H - 1.6 * side) if H > 2.6 * side else H / 2
            f = bg.copy()
            place(f, side, cx, cy)
            hits += any(abs(b.cx - cx) < side / 4 and abs(b.cy - cy) < side / 4 for b in detect(f))
        rates.append(hits / tries)
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--yunet", type=Path, help="YuNet ONNX weights: adds a YuNet column")
    ap.add_argument("--long", type=float, default=64.0, help="seconds of the long 1080p video of section 4 (0: skip)")
    args = ap.parse_args()
    seconds, tries = (4.0, 3) if args.quick else (10.0, 6)
    old = before_module()
    spec = FaceSpec()
    variants = [("before (haar, 640 px BGR)", old, False, {}), ("now (haar, 1280 px grey)", track, True, {})]
    if args.yunet:
        variants.append(("now (yunet, 1280 px grey)", track, True, {"weights": args.yunet}))

    print(f"1. track pass at 1080p, {seconds:.0f} s at {FPS:.0f} fps, detectEvery {spec.detect_every} (frames/s)")
    for label, with_face in (("presenter", True), ("no face", False)):
        frames = presenter(seconds, with_face)
        row = []
        for name, mod, grey, kw in variants:
            small, scale = analysis_frames(frames, mod, grey)
            face = FaceSpec(detector="yunet", weights=str(kw["weights"])) if "weights" in kw else spec
            fps, boxed = track_fps(mod, small, scale, face, **({"weights": kw["weights"]} if kw else {}))
            row.append(fps)
            print(f"   {label:10s} {name:28s} {fps:7.1f} fps   frames with a box: {boxed}/{len(small)}", flush=True)
        print(f"   {label:10s} now ÷ before: {row[1] / row[0]:.2f}")

    sizes = [0.02, 0.03, 0.04, 0.05, 0.07, 0.10, 0.15, 0.20, 0.30]
    print(f"2. found-face rate, face side as a fraction of the frame's longer side ({tries} places each)")
    print("   size      " + " ".join(f"{s:5.0%}" for s in sizes) + "   false faces on the bare 1080p background")
    bare = background(W, H)
    for name, mod, grey, kw in variants:
        def detect(frame, mod=mod, grey=grey, kw=kw):
            small, scale = analysis_frames([frame], mod, grey)
            if mod is old:
                return mod.detect_faces(cv2.cvtColor(small[0], cv2.COLOR_BGR2GRAY), scale)
            return mod.detect_faces(small[0], scale, "yunet" if kw else "haar", kw.get("weights"))
        rates = found_rate(detect, sizes, tries)
        print(f"   {name:28s}" + " ".join(f"{r:5.0%}" for r in rates) + f"   {len(detect(bare))}", flush=True)

    sys.path.insert(0, str(ROOT))
    from tests.test_faces import turned  # the photograph turned about its vertical axis (a card)

    yaws = [0, 15, 30, 45, 60, 70, 75, 80]
    print("2b. found-face rate toward profile: the photograph turned by yaw degrees, both ways, plain and "
          "mirrored (12 % of the width)")
    print("   yaw       " + " ".join(f"{y:4d}°" for y in yaws))
    for name, mod, grey, kw in variants[1:]:
        hits = []
        for y in yaws:
            frames = [turned(sign * y, 0.12 * W, mirror=m) for sign in (1, -1) for m in (False, True)]
            found = 0
            for frame in frames:
                small, scale = analysis_frames([frame], mod, grey)
                boxes = mod.detect_faces(small[0], scale, "yunet" if kw else "haar", kw.get("weights"))
                found += any(abs(b.cx - W / 2) < 0.15 * 0.12 * W for b in boxes)
            hits.append(found / len(frames))
        print(f"   {name:28s}" + " ".join(f"{r:5.0%}" for r in hits), flush=True)

    print("3. build_track on a synthetic scan (a face found 2 s in every 3)")
    times = []
    for minutes in (5, 60):
        n = int(minutes * 60 * FPS)
        det = {i: (track.Box(100 + i % 7, 100, 80, 80) if (i // 50) % 3 else None) for i in range(0, n, 5)}
        t0 = time.perf_counter()
        track.build_track(track.Scan(n, det, [0], 0), fps=FPS, padding=0.25, every=5)
        times.append(time.perf_counter() - t0)
        print(f"   {minutes:3d} min: {times[-1]:.2f} s")
    print(f"   60 min ÷ 5 min: {times[1] / times[0]:.1f} (12 is linear)")
    if args.long:
        long_video(args.long)


def long_video(seconds: float) -> None:
    """Section 4: one pass against segments at once, on a ``seconds`` long 1080p sample."""
    import dataclasses
    import resource
    import tempfile

    from lipsync import cpus, pipeline
    from lipsync.io.probe import probe_video
    from lipsync.sample import VideoRecipe, make_video

    def cpu() -> float:
        c, me = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
        return c.ru_utime + c.ru_stime + me.ru_utime + me.ru_stime

    with tempfile.TemporaryDirectory() as tmp:
        video = make_video(Path(tmp) / "long.mp4", VideoRecipe(width=W, height=H, seconds=seconds))
        info = probe_video(video)
        starts = track.segment_starts(info.frames_estimate, float(info.fps), FaceSpec().detect_every)
        print(f"4. the track stage of a {seconds:.0f} s 1080p video: one pass against {len(starts)} segments, "
              f"{max(1, min(len(starts), cpus.budget() // 2))} at once ({cpus.budget()} cores), 2 pairs")
        one_pass = dataclasses.replace(info, container="mpegts")  # a container without an index: one pass
        for _ in range(2):
            for name, i in (("one pass", one_pass), ("segments", info)):
                t0, c0 = time.perf_counter(), cpu()
                sc = pipeline.scan_video(video, i, FaceSpec())
                print(f"   {name:9s} {time.perf_counter() - t0:6.2f} s wall  {cpu() - c0:6.2f} CPU s  "
                      f"({sc.frames / (time.perf_counter() - t0):.0f} frames/s)", flush=True)


if __name__ == "__main__":
    main()
