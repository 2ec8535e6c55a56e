"""Chunked renders: the output timeline cut into independent units that resume, run in parallel
and join without re-encoding.

A *chunk* is an exact output frame range ``[first, last)``, encoded by its own encoder into its own
MP4 (so it starts on a keyframe with its own parameter sets). Finished chunks live in a *work
area* in the output store (``<output>/.work-<key>/``, a folder or ``s3://``), where ``key`` digests the inputs' checksums, the spec and the chunk length: a run that
finds finished chunks of the same key renders only the missing ones. A chunk counts as finished
only once its record (``chunk-NNNNN.json``: frames and sha256) is written, after its stream and
its preview tiles (``chunk-NNNNN.tiles.npz``: the face before and after the model at the output
frames the preview shows, so the stitch step never decodes a chunk again for them); a record
whose stream does not match its digest is ignored. The work area is removed after a successful
publish.

- ``plan_chunks`` / ``shard`` — which chunks exist, and a pod's contiguous share of them.
- ``WorkArea`` — finished chunks in the store.
- ``render.render_chunks`` — render chunks in this process (``workers.run_workers``: in K).
- ``stitch.stitch`` — the byte-wise join and the mux into MP4 with continuous timestamps.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidSpec
from ..io.fetch import sha256
from ..io.publish import Store

RECORD = "chunk-{:05d}.json"
STREAM = "chunk-{:05d}.{}"
TILES = "chunk-{:05d}.tiles.npz"

Tile = tuple[int, np.ndarray, np.ndarray]  # output frame, (T, T, 3) uint8 BGR before and after the model


@dataclass(frozen=True)
class Chunk:
    """Output frames ``first`` .. ``last - 1``."""

    index: int
    first: int
    last: int

    @property
    def frames(self) -> int:
        return self.last - self.first


def plan_chunks(n_out: int, fps: float, seconds: float) -> list[Chunk]:
    """Chunks of about ``seconds`` each (at least one frame), covering ``n_out`` frames exactly."""
    size = max(1, int(round(seconds * fps)))
    return [Chunk(k, a, min(a + size, n_out)) for k, a in enumerate(range(0, n_out, size))]


def shard(chunks: list[Chunk], index: int, count: int) -> list[Chunk]:
    """Share ``index`` of ``count``: a contiguous run of chunks, the shares as equal as can be."""
    if not 0 <= index < count:
        raise InvalidSpec(f"shard {index}/{count}: the index must be in 0..{count - 1}", stage="render")
    n = len(chunks)
    return chunks[index * n // count:(index + 1) * n // count]


def work_key(identity: dict, seconds: float) -> str:
    """The work area's name: the inputs' checksums, the spec's digest and the chunk length."""
    basis = json.dumps({"inputs": identity["inputs"], "spec": identity["spec_sha256"], "chunk_seconds": seconds},
                       sort_keys=True)
    return hashlib.sha256(basis.encode()).hexdigest()[:32]


class WorkArea:
    """Finished chunks of one render identity, in ``store``."""

    suffix = "mp4"

    def __init__(self, store: Store, key: str) -> None:
        self.store, self.key = store, key

    @property
    def uri(self) -> str:
        return self.store.uri

    def record(self, chunk: Chunk) -> dict | None:
        raw = self.store.get(RECORD.format(chunk.index))
        if raw is None:
            return None
        try:
            rec = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(rec, dict) or rec.get("key") != self.key or rec.get("first") != chunk.first \
                or rec.get("frames") != chunk.frames:
            return None
        return rec

    def finished(self, chunks: list[Chunk]) -> set[int]:
        """Indices of the chunks whose record is there and agrees with the plan."""
        return {c.index for c in chunks if self.record(c) is not None}

    def put(self, chunk: Chunk, stream: Path, tiles: list[Tile] = ()) -> dict:  # type: ignore[assignment]
        """Store a chunk's stream and its preview ``tiles``, then its record: only then does the
        chunk count as finished."""
        rec = {"key": self.key, "index": chunk.index, "first": chunk.first, "frames": chunk.frames,
               "sha256": sha256(stream), "bytes": stream.stat().st_size, "tiles": sorted(t[0] for t in tiles)}
        self.store.put(STREAM.format(chunk.index, self.suffix), stream, content_type="video/mp4",
                       metadata={"sha256": rec["sha256"]})
        if tiles:
            buf = io.BytesIO()
            np.savez(buf, index=np.array([t[0] for t in tiles], np.int64), before=np.stack([t[1] for t in tiles]),
                     after=np.stack([t[2] for t in tiles]))
            self._put_bytes(TILES.format(chunk.index), buf.getvalue(), "application/octet-stream")
        self._put_bytes(RECORD.format(chunk.index), json.dumps(rec).encode(), "application/json")
        return rec

    def _put_bytes(self, name: str, data: bytes, content_type: str) -> None:
        with tempfile.NamedTemporaryFile(suffix=Path(name).suffix, delete=False) as f:
            f.write(data)
        try:
            self.store.put(name, Path(f.name), content_type=content_type, metadata={})
        finally:
            Path(f.name).unlink(missing_ok=True)

    def tiles(self, chunk: Chunk) -> list[Tile]:
        """The finished chunk's preview tiles; [] when it has none or they cannot be read (the
        caller then cuts them from the stitched file)."""
        rec = self.record(chunk)
        if rec is None or not rec.get("tiles"):
            return []
        raw = self.store.get(TILES.format(chunk.index))
        if raw is None:
            return []
        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as z:
                index, before, after = z["index"], z["before"], z["after"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return []
        if sorted(index.tolist()) != rec["tiles"] or before.shape != after.shape or before.dtype != np.uint8 \
                or len(before) != len(index):
            return []
        return [(int(i), b, a) for i, b, a in zip(index, before, after)]

    def fetch(self, chunk: Chunk, dest: Path) -> Path | None:
        """The chunk's stream as a local file, checked against its record; None if missing or wrong."""
        rec = self.record(chunk)
        if rec is None:
            return None
        path = self.store.fetch(STREAM.format(chunk.index, self.suffix), dest)
        if path is None or sha256(path) != rec["sha256"]:
            return None
        return path

    def clean(self, chunks: list[Chunk]) -> None:
        """Remove every chunk (records first: nothing half-removed looks finished)."""
        for c in chunks:
            self.store.delete(RECORD.format(c.index))
        for c in chunks:
            self.store.delete(STREAM.format(c.index, self.suffix))
            self.store.delete(TILES.format(c.index))


__all__ = ["Chunk", "WorkArea", "plan_chunks", "shard", "work_key"]
