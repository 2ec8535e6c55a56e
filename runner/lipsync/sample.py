"""Sample media for demos and tests, made on the spot: nothing is downloaded.

The face is scikit-image's astronaut photograph (a real face), moved and scaled across a
textured background; the speech is espeak-ng, resampled to 44.1 kHz stereo as a studio file
would be. Frames stream into ffmpeg, so long clips cost no memory.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

DEFAULT_TEXT = (
    "Hello! This video was lip synced by the lipsync operator. "
    "The mouth moves with my voice, and the sound you hear is the original recording."
)

# (t in seconds) -> (centre x, centre y, scale) of the face image, in frame fractions / multiples.
Motion = Callable[[float], tuple[float, float, float]]


def drift(t: float) -> tuple[float, float, float]:
    """The default: a slow drift and zoom, the way a presenter moves."""
    return 0.5 + 0.12 * math.sin(0.6 * t), 0.5 + 0.05 * math.sin(0.9 * t), 1.0 + 0.15 * math.sin(0.4 * t)


def still(x: float = 0.5, y: float = 0.5, scale: float = 1.0) -> Motion:
    return lambda t: (x, y, scale)


def exit_right(leave_at: float, speed: float = 1.5) -> Motion:
    """Still until ``leave_at`` seconds, then slides out of the frame to the right."""
    return lambda t: (0.5 + max(0.0, t - leave_at) * speed, 0.5, 1.0)


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise RuntimeError(f"{tool} is not installed: run `bash .ci/setup` (it installs ffmpeg and espeak-ng)")
    return path


def astronaut() -> np.ndarray:
    """The astronaut's head and shoulders, BGR."""
    try:
        from skimage import data
    except ImportError as e:  # the demo needs it; the runner does not
        raise RuntimeError("the sample face needs scikit-image: pip install scikit-image") from e
    return np.ascontiguousarray(data.astronaut()[0:330, 60:420, ::-1])


def background(width: int, height: int, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(60, 200, size=(max(2, height // 40), max(2, width // 40), 3), dtype=np.uint8)
    bg = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    return cv2.GaussianBlur(bg, (0, 0), 3)


def _place(canvas: np.ndarray, face: np.ndarray, cx: float, cy: float, scale: float, base: float) -> None:
    h, w = canvas.shape[:2]
    side = base * scale
    fh, fw = int(round(side * face.shape[0] / face.shape[1])), int(round(side))
    img = cv2.resize(face, (fw, fh), interpolation=cv2.INTER_AREA)
    x0, y0 = int(round(cx * w - fw / 2)), int(round(cy * h - fh / 2))
    xa, ya, xb, yb = max(0, x0), max(0, y0), min(w, x0 + fw), min(h, y0 + fh)
    if xb > xa and yb > ya:
        canvas[ya:yb, xa:xb] = img[ya - y0:yb - y0, xa - x0:xb - x0]


@dataclass(frozen=True)
class VideoRecipe:
    width: int = 1920
    height: int = 1080
    fps: float = 25.0
    seconds: float = 5.0
    motions: Sequence[Motion] = (drift,)
    face_width: float = 0.30  # the face image's width as a fraction of the frame's width
    crf: int = 18
    with_tone: bool = False  # a sound track of its own (the runner must drop it)


def make_video(dest: Path, recipe: VideoRecipe = VideoRecipe()) -> Path:
    """Renders the clip frame by frame into ffmpeg (H.264, yuv420p)."""
    _need("ffmpeg")
    w, h = recipe.width, recipe.height
    face, bg = astronaut(), background(w, h)
    base = recipe.face_width * w
    cmd = [
        "ffmpeg", "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{w}x{h}",
        "-r", f"{recipe.fps}", "-i", "pipe:",
    ]
    if recipe.with_tone:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={recipe.seconds}", "-c:a", "aac", "-shortest"]
    cmd += ["-c:v", "libx264", "-preset", "veryfast", "-crf", str(recipe.crf), "-pix_fmt", "yuv420p",
            "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", str(dest)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    assert proc.stdin is not None
    for i in range(int(round(recipe.seconds * recipe.fps))):
        frame = bg.copy()
        for motion in recipe.motions:
            _place(frame, face, *motion(i / recipe.fps), base)
        proc.stdin.write(frame.tobytes())
    proc.stdin.close()
    if proc.wait() != 0:
        raise RuntimeError(f"ffmpeg failed to write {dest}")
    return dest


def make_speech(dest: Path, text: str = DEFAULT_TEXT, *, rate: int = 44100, channels: int = 2,
                codec_args: Sequence[str] = (), pad_silence: float = 0.0) -> Path:
    """espeak-ng speech, resampled to ``rate``/``channels`` and encoded by the file's extension.

    ``pad_silence`` appends that many seconds of silence (a test of silent frames).
    """
    _need("espeak-ng"), _need("ffmpeg")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        subprocess.run(["espeak-ng", "-s", "150", "-w", str(raw), text], check=True, capture_output=True)
        af = ["-af", f"apad=pad_dur={pad_silence}"] if pad_silence else []
        subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-i", str(raw), *af, "-ar", str(rate),
                        "-ac", str(channels), *codec_args, str(dest)], check=True)
    return dest


def duration(path: Path) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def make_sample(folder: Path) -> tuple[Path, Path]:
    """The README's sample: 1080p talking head + 44.1 kHz stereo speech, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    speech = make_speech(folder / "speech.wav")
    video = make_video(folder / "speaker.mp4", VideoRecipe(seconds=math.ceil(duration(speech)) - 1.0, with_tone=True))
    return video, speech
