"""Track once, dub many: the face track's scan kept by what it depends on.

The same promo dubbed into ten languages is ten jobs on one video: the face track (a decode of
every frame and the detector's searches) is the same for all of them. The scan
(:class:`track.Scan`: detections, landmarks, followed centres, shot cuts) is stored under a key
made of everything it depends on, and a later job with the same key skips the track pass:

* the video's sha256 (its bytes, wherever it came from);
* the face settings that change the scan: ``spec.face`` without ``padding`` (the crop box is
  built from the scan afterwards, so jobs that differ only in padding share it), with the
  detector's weights by their sha256 rather than their URI;
* the probed geometry the analysis frames are decoded on (size, rate, start time, pixel
  format, rotation);
* the tracker's version: a digest of the code that makes the scan (``track.py``, ``faces.py``,
  ``decode.py``, this module) and of the package and OpenCV versions. A new runner never trusts
  an older runner's scan.

Where (``LIPSYNC_TRACK_CACHE``): a folder (a relative one from the current folder), or an
``s3://bucket/prefix`` (what a cluster uses: the operator sets it per namespace, so no team reads
or writes another's entries); ``off`` (or ``none``, ``no``, ``false``, ``0``) disables it. Unset: ``$XDG_CACHE_HOME/lipsync/tracks`` (``~/.cache/...``) on a workstation, and
no cache in a cluster unless the operator configures one.

The cache can only save work, never fail a job: an entry that cannot be read or parsed is
reported as a warning and the track is computed; one that cannot be written likewise. An S3
cache store that does not answer is given ``S3_RETRY_SECONDS`` (not the job's own S3 bound), and
once it has failed it is not tried again in that run. Entries
are written atomically (a folder: a temporary file renamed; S3: the store's temporary key and
copy). A scan that found no face is never stored.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import cv2

from .. import log
from ..errors import InvalidSpec, LipSyncError
from ..io.probe import VideoInfo
from ..policy import in_cluster
from ..spec import FaceSpec
from .track import Box, Scan

ENV = "LIPSYNC_TRACK_CACHE"
FORMAT = 1  # of an entry's JSON; part of the key
_CODE = ("track.py", "faces.py", "decode.py", "trackcache.py")


OFF = ("off", "none", "no", "false", "0", "disabled")  # what a user may write to turn it off
S3_RETRY_SECONDS = 10.0  # a cache store that does not answer is given up on sooner than the job's own


def location(env: dict[str, str] | None = None) -> str | None:
    """Where the cache lives: a folder path (relative: to the current folder) or an ``s3://``
    prefix; None when off.

    Raises InvalidSpec for a value that is neither (e.g. ``http://...``)."""
    env = dict(os.environ) if env is None else env
    raw = env.get(ENV, "").strip()
    if raw.lower() in OFF:
        return None
    if raw:
        if "://" in raw and not raw.startswith(("s3://", "file://")):
            raise InvalidSpec(f"{ENV}={raw!r}: give a folder, an s3://bucket/prefix, or 'off'", stage="track")
        return raw
    if in_cluster(env):
        return None  # a pod's scratch dies with it; the operator names a shared store when it has one
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "lipsync" / "tracks")


@functools.cache
def tracker_version() -> str:
    """A digest of what makes a scan: this package's scan code and the libraries it runs on."""
    h = hashlib.sha256()
    here = Path(__file__).parent
    for name in _CODE:
        h.update(name.encode() + b"\0" + (here / name).read_bytes() + b"\0")
    try:
        version = metadata.version("lipsync-operator")
    except metadata.PackageNotFoundError:
        version = "source"
    h.update(f"lipsync {version}; opencv {cv2.__version__}".encode())
    return h.hexdigest()[:16]


def key(video_sha256: str, face: FaceSpec, info: VideoInfo, face_weights_sha256: str | None = None) -> str:
    """The cache key (hex sha256) of the scan of a video with this sha256, face settings and
    probed geometry, by this tracker."""
    doc = {
        "format": FORMAT,
        "tracker": tracker_version(),
        "video": video_sha256,
        "face": face.model_dump(mode="json", by_alias=True, exclude={"padding", "weights"}),
        "face_weights": face_weights_sha256,
        "geometry": {"width": info.width, "height": info.height, "fps": str(info.fps),
                     "start_time": info.start_time, "pix_fmt": info.pix_fmt, "rotation": info.rotation},
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------------------ the entry format
def scan_to_json(sc: Scan) -> dict[str, Any]:
    """``sc`` as JSON-ready data that :func:`scan_from_json` turns back into an equal Scan (floats
    are written exactly: JSON keeps a float's shortest round-trip form)."""
    return {
        "frames": sc.frames,
        "detections": {str(i): None if b is None else [b.x, b.y, b.w, b.h] for i, b in sc.detections.items()},
        "cuts": list(sc.cuts),
        "detector_calls": sc.detector_calls,
        "landmarks": {str(i): [list(p) for p in pts] for i, pts in sc.landmarks.items()},
        "followed": {str(i): list(c) for i, c in sc.followed.items()},
        "searches": sc.searches,
        "most_faces": sc.most_faces,
    }


def scan_from_json(doc: Any) -> Scan:
    """The Scan :func:`scan_to_json` wrote. Raises ValueError (or TypeError, KeyError) on anything else."""
    def pair(v: Any) -> tuple[float, float]:
        x, y = v
        return float(x), float(y)

    def box(v: Any) -> Box | None:
        if v is None:
            return None
        x, y, w, h = v
        return Box(float(x), float(y), float(w), float(h))

    frames = int(doc["frames"])
    sc = Scan(
        frames=frames,
        detections={int(i): box(v) for i, v in doc["detections"].items()},
        cuts=[int(c) for c in doc["cuts"]],
        detector_calls=int(doc["detector_calls"]),
        landmarks={int(i): tuple(pair(p) for p in pts) for i, pts in doc["landmarks"].items()},
        followed={int(i): pair(c) for i, c in doc["followed"].items()},
        searches=int(doc["searches"]),
        most_faces=int(doc.get("most_faces", 0)),
    )
    indices = [*sc.detections, *sc.landmarks, *sc.followed, *sc.cuts]
    if frames < 1 or not sc.cuts or sc.cuts[0] != 0 or any(not 0 <= i < frames for i in indices):
        raise ValueError("frame indices outside the scan's frames")
    return sc


# ------------------------------------------------------------------------------ the store
@dataclass
class TrackCache:
    """The cache at ``uri`` (a folder or ``s3://`` prefix): :meth:`load` and :meth:`save` by key.

    A store that fails once (unreadable, unreachable, a file where the folder should be) is not
    tried again by this object: one warning, and the job goes on as if there were no cache."""

    uri: str
    broken: bool = False

    def _store(self) -> Any:
        from ..io.publish import LocalStore
        from ..io.fetch import local_path

        if self.uri.startswith("s3://"):
            from ..io.s3 import S3Store

            return S3Store(self.uri, retry_seconds=S3_RETRY_SECONDS)
        folder = local_path(self.uri)
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"{ENV}={self.uri!r} is a file, not a folder: give a folder, an s3:// "
                                     "prefix, or 'off'")
        return LocalStore(self.uri)

    def entry_uri(self, k: str) -> str:
        return f"{self.uri.rstrip('/')}/{k}.json"

    def load(self, k: str) -> Scan | None:
        """The scan stored under ``k``; None when there is none or it cannot be used (a warning
        says why: the track is then computed as if there were no cache)."""
        try:
            raw = self._store().get(f"{k}.json")
        except Exception as e:  # noqa: BLE001 - a cache that cannot be read is a cache miss, never a failed job
            self._fail(f"could not read the track cache entry {self.entry_uri(k)}", e)
            return None
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
            if doc.get("key") != k or doc.get("format") != FORMAT:
                raise ValueError("it was written for another key")
            return scan_from_json(doc["scan"])
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            _warn(f"the track cache entry {self.entry_uri(k)} is damaged ({type(e).__name__}: {e}); "
                  "computing the track and replacing it")
            return None

    def save(self, k: str, sc: Scan, scratch: Path) -> bool:
        """Store ``sc`` under ``k``; False (with a warning) when the store refuses it, or failed before."""
        if self.broken:
            return False
        src = scratch / f"track-cache-{k}.json"
        try:
            src.write_text(json.dumps({"format": FORMAT, "key": k, "tracker": tracker_version(),
                                       "scan": scan_to_json(sc)}))
            self._store().put(f"{k}.json", src, content_type="application/json", metadata={})
            return True
        except Exception as e:  # noqa: BLE001 - nor one that cannot be written
            self._fail(f"could not write the track cache entry {self.entry_uri(k)}", e)
            return False
        finally:
            src.unlink(missing_ok=True)

    def _fail(self, what: str, e: Exception) -> None:
        self.broken = True
        why = str(e) if isinstance(e, (LipSyncError, NotADirectoryError)) else f"{type(e).__name__}: {e}"
        _warn(f"{what} ({why}); going on without the track cache")


def _warn(message: str) -> None:
    log.event(message, logging.WARNING, event="track-cache")
