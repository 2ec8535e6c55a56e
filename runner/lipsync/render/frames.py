"""Planar frames: full pictures stay in the source's own YUV layout from decoder to encoder.

A ``Layout`` names the planar pixel format the render works in (ffmpeg's name, bit depth, chroma
subsampling); a ``Picture`` is one frame of it, three numpy plane views over one reusable buffer
from a ``FramePool``. ``PlanarReader`` fills pool buffers straight from ffmpeg's pipe
(``readinto``, no intermediate bytes) and ``PlanarWriter`` writes them to the encoder from the
same memory, then gives them back to the pool. Nothing converts a whole frame: only the face
window is converted, in ``render.colour``.
"""

from __future__ import annotations

import contextlib
import queue
import re
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from .. import cpus, env
from ..errors import EncodeFailed, InvalidMedia
from ..io.probe import Colour
from ..video.decode import grid_origin, seek_args, tail

_END = object()

# ffmpeg planar YUV formats the render keeps as they are: name -> (log2 chroma w, log2 chroma h)
_SUBSAMPLING = {"420": (1, 1), "422": (1, 0), "444": (0, 0)}


@dataclass(frozen=True)
class Layout:
    """A planar YUV picture layout: ``pix_fmt`` (ffmpeg's name), ``bits`` per sample (8: uint8
    samples, 9-16: little-endian uint16), chroma subsampling ``sx``/``sy`` (1: halved, 0: full),
    and the even-padded ``width``/``height`` in pixels."""

    pix_fmt: str
    bits: int
    sx: int
    sy: int
    width: int
    height: int

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8) if self.bits == 8 else np.dtype("<u2")

    @property
    def chroma_size(self) -> tuple[int, int]:
        """(width, height) of each chroma plane."""
        return self.width >> self.sx, self.height >> self.sy

    @property
    def samples(self) -> int:
        cw, ch = self.chroma_size
        return self.width * self.height + 2 * cw * ch

    @property
    def frame_bytes(self) -> int:
        return self.samples * self.dtype.itemsize

    @property
    def max_value(self) -> int:
        return (1 << self.bits) - 1


def layout_for(pix_fmt: str, bits: int, width: int, height: int) -> Layout:
    """The planar layout to render a source of ``pix_fmt`` in.

    Planar 4:2:0, 4:2:2 and 4:4:4 at 8 or 10 bits are kept as they are (the full-range ``yuvj``
    names too: asking ffmpeg for plain ``yuv`` there would squeeze them to limited range); anything else (packed, semi-planar NV12/P010, RGB, grey, alpha) is decoded to 4:2:0
    at 8 bits, or 10 bits where the source has more than 8. Sizes are padded to even numbers, as
    4:2:0 and 4:2:2 video needs.
    """
    w, h = width + width % 2, height + height % 2
    m = re.fullmatch(r"yuvj?(420|422|444)p(10)?(le)?", pix_fmt)
    if m and (m.group(2) is None or m.group(3) == "le"):
        sx, sy = _SUBSAMPLING[m.group(1)]
        depth = 10 if m.group(2) else 8
        return Layout(pix_fmt if depth == 8 else f"yuv{m.group(1)}p10le", depth, sx, sy, w, h)
    if bits > 8:
        return Layout("yuv420p10le", 10, 1, 1, w, h)
    return Layout("yuv420p", 8, 1, 1, w, h)


class Picture:
    """One frame: ``y`` (H, W), ``u`` and ``v`` (H >> sy, W >> sx) views of ``buffer``."""

    __slots__ = ("buffer", "y", "u", "v")

    def __init__(self, layout: Layout, buffer: np.ndarray) -> None:
        self.buffer = buffer  # 1-D, layout.samples long, layout.dtype
        n = layout.width * layout.height
        cw, ch = layout.chroma_size
        self.y = buffer[:n].reshape(layout.height, layout.width)
        self.u = buffer[n:n + cw * ch].reshape(ch, cw)
        self.v = buffer[n + cw * ch:].reshape(ch, cw)

    def copy_from(self, other: "Picture") -> "Picture":
        np.copyto(self.buffer, other.buffer)
        return self


PREFETCH = 2  # decoded frames a reader keeps ready: the decoder outruns the render, so 2 cover its jitter
WRITE_DEPTH = 2  # pictures queued for the encoder: one being written, one waiting; more only hold memory


class FramePool:
    """``count`` reusable frame buffers; ``get`` blocks until one is given back with ``put``.

    The pool is what bounds a render's memory: every full frame in flight (prefetched, waiting for
    the model, queued for the encoder) holds one buffer.
    """

    def __init__(self, layout: Layout, count: int) -> None:
        self.layout = layout
        self.count = count
        self._free: queue.SimpleQueue[Picture] = queue.SimpleQueue()
        for _ in range(count):
            self._free.put(Picture(layout, np.empty(layout.samples, layout.dtype)))

    def get(self, stop: threading.Event | None = None) -> Picture | None:
        """A free picture; None once ``stop`` is set while waiting."""
        while True:
            try:
                return self._free.get(timeout=0.1)
            except queue.Empty:
                if stop is not None and stop.is_set():
                    return None

    def put(self, picture: Picture) -> None:
        self._free.put(picture)


def colour_args(colour: Colour) -> list[str]:
    """ffmpeg options that tag a stream with ``colour`` (only what was declared)."""
    args: list[str] = []
    for flag, value in (("-colorspace", colour.matrix), ("-color_primaries", colour.primaries),
                        ("-color_trc", colour.transfer), ("-color_range", colour.range)):
        if value:
            args += [flag, value]
    return args


def decode_args(path: Path, layout: Layout, *, fps: Fraction, start_time: float, source_size: tuple[int, int],
                start_frame: int = 0, frames: int | None = None, seek: bool = True,
                threads: int | None = None) -> list[str]:
    """ffmpeg argv writing raw ``layout`` frames to stdout, frame ``start_frame`` first.

    Frames are numbered on one grid for every read: timestamps are kept (``-copyts``) and the fps
    filter starts at the stream's own first timestamp, so frame k is the same picture whether the
    read starts at 0 or seeks. A read from ``start_frame`` starts at the keyframe at or before it
    (``video.decode.seek_args``, when ``seek``: containers with an index) and ``trim`` then drops
    anything earlier, exactly.
    (Timestamps are absolute, so trims are in seconds from ``start_time``, not frame counts.)
    ``threads``: the decoder's threads (None: ffmpeg's choice).
    """
    argv = ["ffmpeg", "-nostdin", "-loglevel", "error"]
    if threads:
        argv += ["-threads", str(threads)]
    if start_frame and seek:  # from the keyframe at or before the frame; trim starts exactly at it
        argv += seek_args(start_frame, fps)
    argv += ["-copyts", "-i", str(path), "-map", "0:v:0"]
    origin = grid_origin(start_time, fps)
    chain = [f"fps=fps={fps}:start_time={origin:.6f}"]

    def at(k: int) -> str:  # frame k of the grid stands at origin + k / fps: trim half a frame before it
        return f"{origin + (k - 0.5) / float(fps):.6f}"

    if start_frame:
        chain.append(f"trim=start={at(start_frame)}")
    if frames is not None:
        chain.append(f"trim=end={at(start_frame + frames)}")
    w, h = source_size
    if (w, h) != (layout.width, layout.height):  # odd sizes: one replicated column/row
        chain.append(f"pad={layout.width}:{layout.height}")
        chain.append(f"fillborders=right={layout.width - w}:bottom={layout.height - h}:mode=smear")
    chain.append(f"format={layout.pix_fmt}")
    argv += ["-vf", ",".join(chain), "-f", "rawvideo", "-pix_fmt", layout.pix_fmt, "pipe:"]
    return argv


def encode_args(dest: Path, layout: Layout, fps: Fraction, colour: Colour, *, codec: str, crf: int, preset: str,
                sample_aspect_ratio: str | None = None, threads: int | None = None) -> list[str]:
    """ffmpeg argv encoding raw ``layout`` frames from stdin into ``dest``, tagged with ``colour``."""
    size = f"{layout.width}x{layout.height}"
    argv = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", layout.pix_fmt,
            "-s", size, "-r", str(fps)]
    if colour.range:
        argv += ["-color_range", colour.range]
    argv += ["-i", "pipe:", "-c:v", codec, "-crf", str(crf), "-preset", preset, "-pix_fmt", layout.pix_fmt,
             "-r", str(fps), *colour_args(colour)]
    if threads:
        argv += ["-threads", str(threads)]
    if sample_aspect_ratio:
        argv += ["-vf", f"setsar={sample_aspect_ratio.replace(':', '/')}"]
    if codec == "libx265":  # x265 sizes its pool itself: ffmpeg's -threads does not reach it
        argv += ["-tag:v", "hvc1", "-x265-params", "log-level=error" + (f":pools={threads}" if threads else "")]
    return argv + [str(dest)]


def _read_full(stream, view: memoryview) -> bool:
    """Fill ``view`` from ``stream``; False at a clean end (nothing read), InvalidMedia-free."""
    got = 0
    while got < len(view):
        n = stream.readinto(view[got:])
        if not n:
            return False
        got += n
    return True


class PlanarReader:
    """Iterates ``Picture``s decoded by ffmpeg (``argv`` from ``decode_args``) into ``pool`` buffers.

    A thread keeps up to ``prefetch`` frames ready. The consumer owns each picture it is given and
    must ``pool.put`` it back. Raises InvalidMedia (naming ``field``) when ffmpeg fails.
    """

    def __init__(self, argv: list[str], pool: FramePool, *, field: str = "spec.video", prefetch: int = PREFETCH) -> None:
        self.pool, self.field = pool, field
        self._errors = tempfile.TemporaryFile()
        try:
            self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._errors, bufsize=0)
        except OSError:
            self._errors.close()
            raise
        self._ready: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="decode", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        stream = self._proc.stdout
        try:
            while not self._stop.is_set():
                pic = self.pool.get(self._stop)
                if pic is None:
                    break
                if not _read_full(stream, memoryview(pic.buffer).cast("B")):
                    self.pool.put(pic)
                    break
                self._put(pic)
        except (OSError, ValueError):
            pass  # the pipe was closed under us: close() is running
        finally:
            self._put(_END)

    def _put(self, item: object) -> None:
        while not self._stop.is_set():
            try:
                self._ready.put(item, timeout=0.1)
                return
            except queue.Full:
                pass
        if isinstance(item, Picture):
            self.pool.put(item)

    def __iter__(self) -> Iterator[Picture]:
        while True:
            item = self._ready.get()
            if item is _END:
                break
            yield item
        code = self._proc.wait()
        if code != 0 and not self._stop.is_set():
            lines = tail(self._errors).splitlines()
            detail = lines[-1] if lines else f"ffmpeg exit {code}"
            raise InvalidMedia(f"{self.field}: decoding failed ({detail}): the file may be corrupt or truncated",
                               stage="decode")

    def close(self) -> None:
        """Stop ffmpeg and the thread; give back every buffer still queued. Safe to call twice."""
        self._stop.set()
        if self._proc.poll() is None:
            self._proc.kill()
        self._thread.join()
        while True:
            try:
                item = self._ready.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Picture):
                self.pool.put(item)
        self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._errors.close()

    def __enter__(self) -> "PlanarReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PlanarWriter:
    """Feeds ``Picture``s to an encoder (``argv`` from ``encode_args``) from a thread, in order,
    and hands each back with ``release`` once written. On success ``close`` waits for the file;
    on any error the encoder is killed, so no half-written file looks finished."""

    def __init__(self, argv: list[str], release: Callable[[Picture], None], *, depth: int = WRITE_DEPTH) -> None:
        self._release = release
        self._errors = tempfile.TemporaryFile()
        try:
            self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stderr=self._errors, bufsize=0)
        except OSError:
            self._errors.close()
            raise
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="encode", daemon=True)
        self._thread.start()
        self.frames = 0

    def _drain(self) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        while (pic := self._queue.get()) is not _END:
            try:
                if self._error is None:
                    view = memoryview(pic.buffer).cast("B")
                    while view:
                        view = view[stdin.write(view):]
            except (BrokenPipeError, OSError, ValueError) as e:
                self._error = e
            finally:
                self._release(pic)

    def write(self, picture: Picture) -> None:
        if self._error is not None:  # ffmpeg is gone: stop now, not after the model ran the whole clip
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
            self._release(picture)
            raise EncodeFailed(f"ffmpeg stopped taking frames: {self._why()}", stage="encode")
        self._queue.put(picture)
        self.frames += 1

    def _why(self) -> str:
        err = tail(self._errors)
        if err:
            return err.splitlines()[-1]
        return str(self._error) if self._error is not None else f"ffmpeg exit {self._proc.poll()}"

    def close(self) -> None:
        self._queue.put(_END)
        self._thread.join()
        assert self._proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, OSError):
            self._proc.stdin.close()
        code = self._proc.wait()
        why = self._why()
        self._errors.close()
        if code != 0 or self._error is not None:
            raise EncodeFailed(f"ffmpeg could not encode the output: {why}", stage="encode")

    def abort(self) -> None:
        self._proc.kill()
        self._error = self._error or BrokenPipeError("aborted")
        self._queue.put(_END)
        self._thread.join()
        assert self._proc.stdin is not None
        with contextlib.suppress(OSError):
            self._proc.stdin.close()
        self._proc.wait()
        self._errors.close()

    def __enter__(self) -> "PlanarWriter":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def decoder_threads() -> int:
    """Threads of the render's decoder (``LIPSYNC_DECODER_THREADS``; default one per 4 cores of
    the CPU budget (``lipsync.cpus``), 1-4).

    The decoder feeds an encoder that is several times slower per frame, so it needs few threads;
    each frame thread of ffmpeg's H.264 decoder holds its own frames (a 1080p decoder with its
    default 3 threads on 2 cores: 125 MB resident and 1.11 CPU s per 10 s; one thread: 89 MB,
    0.84 CPU s), and every core it leaves free is the encoder's.
    """
    return int(env.number("LIPSYNC_DECODER_THREADS", max(1, min(4, cpus.budget() // 4)), int, stage="render"))
