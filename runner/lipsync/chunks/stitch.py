"""Stitch: finished chunks joined without re-encoding.

Each chunk is its own MP4 that opens on a keyframe; ffmpeg's concat demuxer places each file
right after the previous one's exact duration (frames ÷ rate), so the joined stream has
continuous timestamps, exactly the planned frame count and every frame in order, B-frames
included. (Raw elementary streams joined byte-wise were tried and lose the last frames' order
information: their muxed timestamps come out short by the B-frame delay.)
"""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

from ..errors import EncodeFailed
from ..preview import TILE, Sheet
from ..render import Converter, Timeline
from ..video.track import CropBox
from . import Chunk, WorkArea


class MissingChunk(Exception):
    def __init__(self, chunk: Chunk) -> None:
        super().__init__(f"chunk {chunk.index} is missing or does not match its record")
        self.chunk = chunk


def stitch(work: WorkArea, chunks: list[Chunk], fps: Fraction, codec: str, scratch: Path, dest: Path) -> Path:
    """Join ``chunks`` (all finished) into ``dest`` (MP4, video only). Raises MissingChunk for a
    chunk that vanished or does not match its digest, so the caller can render it again."""
    scratch.mkdir(parents=True, exist_ok=True)
    paths = []
    for chunk in chunks:
        path = work.fetch(chunk, scratch / f"fetched-{chunk.index:05d}.mp4")
        if path is None:
            raise MissingChunk(chunk)
        paths.append(path)
    listing = scratch / "chunks.txt"
    quoted = (str(p.resolve()).replace("'", "'\\''") for p in paths)  # the concat list's quoting
    listing.write_text("".join(f"file '{q}'\n" for q in quoted))
    argv = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing),
            "-map", "0:v:0", "-c", "copy"]
    if codec == "libx265":
        argv += ["-tag:v", "hvc1"]
    done = subprocess.run(argv + [str(dest)], capture_output=True, text=True)
    for p in paths:
        if p.parent == scratch:
            p.unlink(missing_ok=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise EncodeFailed(f"joining the chunks failed: {lines[-1] if lines else done.returncode}", stage="stitch")
    return dest


def fill_sheet(sheet: Sheet, source: Timeline, rendered: Timeline, converter: Converter,
               boxes: list[CropBox | None], order: list[int]) -> None:
    """The preview tiles the render did not collect (chunks rendered by other processes or runs),
    from the files: the picked output frame's face before (the source frame it shows) and after
    (the stitched render). Each is a seek: cheap with short keyframe intervals, never a full pass."""
    have = {t[0] for t in sheet.tiles}
    for i in sorted(sheet.wanted - have):
        box = boxes[order[i]]
        if box is None:
            continue
        before = converter.window(source.picture(order[i]), box, TILE)
        after = converter.window(rendered.picture(i), box, TILE)
        sheet.add(i, before, after)
