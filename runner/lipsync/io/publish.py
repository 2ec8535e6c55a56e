"""Publish: artifacts into the output folder or S3 prefix, atomically, never over another job's.

Each artifact is written under a temporary name and renamed (S3: copied server-side) into place,
so a reader never sees half a file. ``metrics.json`` goes last: its presence means "finished",
and the identity it records (job, uid, input checksums, spec digest) tells a re-run of the same
job, which has nothing to do, from another job, whose render must not be overwritten.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from ..errors import OutputExists
from .fetch import local_path

ARTIFACTS = {  # name in the output -> (key in status.artifacts, content type)
    "output.mp4": ("video", "video/mp4"),
    "output.mov": ("video", "video/quicktime"),  # speech MP4 cannot carry exactly (video.remux)
    "preview.jpg": ("preview", "image/jpeg"),
    "track.json": ("track", "application/json"),  # the face track (video.track.to_json), as `lipsync track --json`
    "run.log": ("log", "text/plain"),
    "metrics.json": ("metrics", "application/json"),
}


class Store(Protocol):
    uri: str

    def get(self, name: str) -> bytes | None: ...

    def put(self, name: str, src: Path, *, content_type: str, metadata: dict[str, str]) -> str: ...

    def fetch(self, name: str, dest: Path) -> Path | None:
        """A local file with the object's bytes (``dest``, or the file itself for a folder store);
        None if absent."""

    def delete(self, name: str) -> None:
        """Remove an object; absent is fine."""


@dataclass
class LocalStore:
    uri: str

    @property
    def folder(self) -> Path:
        return local_path(self.uri)

    def get(self, name: str) -> bytes | None:
        try:
            return (self.folder / name).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def put(self, name: str, src: Path, *, content_type: str, metadata: dict[str, str]) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.folder)
        os.close(fd)
        try:
            shutil.copyfile(src, tmp)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts are ordinary files
            os.replace(tmp, self.folder / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return str(self.folder / name)

    def fetch(self, name: str, dest: Path) -> Path | None:
        path = self.folder / name
        return path if path.is_file() else None

    def delete(self, name: str) -> None:
        (self.folder / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # the folder goes with its last file
            self.folder.rmdir()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def open_store(uri: str) -> Store:
    if uri.startswith("s3://"):
        from .s3 import S3Store

        return S3Store(uri)
    return LocalStore(uri)


Verdict = Literal["absent", "same-job", "other-job"]


def check_existing(store: Store, identity: dict) -> tuple[Verdict, dict | None]:
    """What a finished render already at the output is, relative to this job."""
    raw = store.get("metrics.json")
    if raw is None:
        return "absent", None
    try:
        found = json.loads(raw)
    except ValueError:
        return "other-job", None
    if not isinstance(found, dict):
        return "other-job", None
    if found.get("identity") == identity:
        return "same-job", found
    if found.get("replacing_with") == identity:  # this job's own replacement, interrupted: finish it
        return "absent", None
    owner = found.get("identity") or found.get("replacing_with") or {}
    mine = identity.get("namespace")
    theirs = owner.get("namespace") if isinstance(owner, dict) else None
    if mine and theirs and theirs != mine:
        # Another namespace's render: no field of this job (output.overwrite included) replaces it.
        raise OutputExists(
            f"{store.uri} holds a render of job {owner.get('job')!r} in namespace {theirs!r}: a job in namespace "
            f"{mine!r} never replaces it, whatever spec.output.overwrite says; choose another spec.output.uri",
            stage="fetch")
    return "other-job", found


def mark_replacing(store: Store, identity: dict, scratch: Path) -> None:
    """Before replacing a finished render, mark it unfinished: should the replacement stop half
    way, no job (neither the old nor the new) mistakes the mix of files for its finished render."""
    stub = scratch / "metrics.replacing.json"
    stub.write_text(json.dumps({"identity": None, "replacing_with": identity}))
    store.put("metrics.json", stub, content_type="application/json", metadata={"job": str(identity.get("job"))})


def refuse_other(store: Store, found: dict | None, identity: dict | None = None, spec: dict | None = None
                 ) -> OutputExists:
    """The OutputExists error for a finished render this job may not replace. When the render is
    this job's own (same name and namespace) from earlier inputs or another spec, the message says
    which inputs and spec fields changed: ``identity`` and ``spec`` are this run's (the spec as
    recorded in metrics.json: JSON by alias, without ``output.overwrite``)."""
    found = found or {}
    who = found.get("identity") or {}
    if found.get("replacing_with"):
        who = found["replacing_with"]
        desc = f"an unfinished replacement by job {who.get('job')!r}"
    elif who and identity is not None and _same_job(who, identity):
        changes = describe_changes(who, identity, found.get("spec"), spec)
        return OutputExists(
            f"{store.uri} already holds an earlier render of this job ({who.get('job')!r}) that differs from "
            f"this run" + (": " + "; ".join(changes) if changes else "") + ". It is kept: set "
            "spec.output.overwrite: true (CLI: --force) to render again over it, or choose another "
            "spec.output.uri", stage="publish")
    elif who:
        desc = f"a finished render of job {who.get('job')!r}" + (f" (uid {who['uid']})" if who.get("uid") else "")
    else:
        desc = "another render"
    return OutputExists(
        f"{store.uri} already holds {desc}: choose another spec.output.uri, "
        "or set spec.output.overwrite: true (CLI: --force) to replace it", stage="publish")


def _same_job(a: dict, b: dict) -> bool:
    return a.get("job") == b.get("job") and a.get("namespace") == b.get("namespace")


_SHOWN_FIELDS = 6  # changed spec fields named in one message


def _flatten(doc: object, prefix: str) -> dict[str, object]:
    if isinstance(doc, dict):
        out: dict[str, object] = {}
        for k, v in doc.items():
            out.update(_flatten(v, f"{prefix}.{k}"))
        return out or {prefix: {}}
    return {prefix: doc}


def _is_location(value: object) -> bool:
    """A URI or path: named, never quoted (a presigned URL carries a signature)."""
    return isinstance(value, str) and ("://" in value or "/" in value)


def _brief(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe_changes(old: dict, new: dict, old_spec: dict | None, new_spec: dict | None) -> list[str]:
    """What differs between two identities of one job, as phrases: "changed inputs: spec.audio
    (new content)", "changed spec fields: spec.face.padding (0.25 -> 0.3)", "uid ..."."""
    phrases = []
    if old.get("uid") != new.get("uid"):
        phrases.append(f"the job object was re-created (uid {old.get('uid')} -> {new.get('uid')})")
    old_in, new_in = old.get("inputs") or {}, new.get("inputs") or {}
    inputs = sorted(k for k in {*old_in, *new_in} if old_in.get(k) != new_in.get(k))
    if inputs:
        phrases.append("changed inputs: " + ", ".join(
            f"spec.{k} (" + ("new content" if k in old_in and k in new_in else "added" if k in new_in else "removed") + ")"
            for k in inputs))
    if old.get("spec_sha256") != new.get("spec_sha256"):
        if isinstance(old_spec, dict) and isinstance(new_spec, dict):
            a, b = _flatten(old_spec, "spec"), _flatten(new_spec, "spec")
            fields = [k for k in sorted({*a, *b}) if a.get(k, "<unset>") != b.get(k, "<unset>")]
            named = [k if _is_location(a.get(k)) or _is_location(b.get(k)) else
                     f"{k} ({_brief(a.get(k))} -> {_brief(b.get(k))})" for k in fields[:_SHOWN_FIELDS]]
            more = f", ... {len(fields) - _SHOWN_FIELDS} more" if len(fields) > _SHOWN_FIELDS else ""
            phrases.append("changed spec fields: " + ", ".join(named) + more)
        else:  # a render published before metrics.json recorded the spec
            phrases.append("its spec changed (the render's metrics.json does not record which fields)")
    return phrases


def publish(store: Store, files: dict[str, Path], metadata: dict[str, str]) -> dict[str, str]:
    """Upload the artifacts (metrics.json last); returns status.artifacts: key -> URI."""
    out: dict[str, str] = {}
    for name in sorted(files, key=lambda n: n == "metrics.json"):
        key, ctype = ARTIFACTS[name]
        out[key] = store.put(name, files[name], content_type=ctype, metadata=metadata)
    return out
