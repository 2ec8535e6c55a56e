"""Strict, safe loading of published checkpoints into a known module tree.

Checkpoints come from the internet and from users' buckets, so loading must never run code
(``weights_only``) and must fail with a message that says what is wrong (which keys are missing,
unexpected or mis-shaped, or which model the file really is), since a job that silently renders
with the wrong weights is worse than one that fails.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import IO, Any, Callable, Mapping, TypeVar

import torch
from torch import nn

from ..errors import InvalidWeights

PathOrFile = str | os.PathLike[str] | IO[bytes]
M = TypeVar("M", bound=nn.Module)

_DATA_PARALLEL_PREFIX = "module."  # the published checkpoints were saved from nn.DataParallel
_SHOWN_KEYS = 3  # keys quoted per kind of mismatch
_STAGE = "model"

# A key that only one known model has -> what a file holding it most likely is.
_SIGNATURES = {
    "face_encoder_blocks.0.0.conv_block.0.weight": "the Wav2Lip generator (wav2lip.pth, wav2lip_gan.pth)",
    "face_encoder.0.conv_block.0.weight": "the SyncNet lip-sync expert (lipsync_expert.pth)",
}


def describe(source: PathOrFile) -> str:
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "<stream>")


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since 1.6: a zip archive
_PICKLE_MAGIC = b"\x80"  # the legacy format: a pickle (protocol 2 or later)


def _head(source: PathOrFile, size: int = 16) -> bytes:
    """The first bytes of a file or a seekable stream (its position is restored)."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            return f.read(size)
    if not source.seekable():
        return _ZIP_MAGIC  # cannot look ahead: let torch tell
    pos = source.tell()
    try:
        return source.read(size)
    finally:
        source.seek(pos)


def _what_it_is(head: bytes) -> str:
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype", b"<html", b"<?xml")):
        return "an HTML or XML page (a download link that needs a login, or an error page?)"
    if text.startswith((b"{", b"[")):
        return "JSON text"
    if head.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the file it points to (git lfs pull)"
    if not head:
        return "an empty file"
    return f"unknown data (it starts with {head[:8]!r})"


def read_checkpoint(source: PathOrFile, label: str) -> Any:
    """torch.load on the CPU with ``weights_only``: unpickling must not be able to run code.

    InvalidWeights, saying what the file is instead, when it is not a PyTorch checkpoint (random
    bytes, an HTML error page, a Git LFS pointer) or holds objects other than tensors."""
    where = describe(source)
    if isinstance(source, (str, os.PathLike)) and not Path(source).is_file():
        what = "is a folder, not a checkpoint file" if Path(source).is_dir() else ": no such file"
        raise InvalidWeights(f"{label} weights {where!r} {what}".replace(" :", ":"), stage=_STAGE)
    head = _head(source)
    if not head.startswith((_ZIP_MAGIC, _PICKLE_MAGIC)):
        raise InvalidWeights(
            f"{label} weights {where!r} are not a PyTorch checkpoint (a .pth file is a zip archive or a "
            f"legacy torch pickle); this is {_what_it_is(head)}: check the file or the URL it came from",
            stage=_STAGE)
    # A checkpoint file in torch's zip format is mapped, not read: its tensors are the file's pages
    # (the page cache), so processes that load the same file (chunk workers) share one copy, and
    # the kernel may drop it under pressure. Legacy pickles and open files are read.
    mapped = isinstance(source, (str, os.PathLike)) and head.startswith(_ZIP_MAGIC)
    try:
        return torch.load(source, map_location="cpu", weights_only=True, mmap=mapped)
    except pickle.UnpicklingError as e:
        # torch's text advises weights_only=False, i.e. running the file's code: never here.
        found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(e))
        detail = found.group(1).strip()[:200] if found else "it is not a valid pickle"
        raise InvalidWeights(
            f"{label} weights {where!r} cannot be loaded safely ({detail}): the file holds Python objects "
            "besides tensors, or is damaged; objects are never unpickled, since that could run code. Use a "
            "checkpoint of plain tensors (a state_dict)", stage=_STAGE) from None
    except Exception as e:  # torch raises many types (RuntimeError, EOFError, ...)
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip() and "weights_only" not in ln]
        detail = (lines or [""])[0][:200]
        raise InvalidWeights(
            f"{label} weights {where!r} are not a readable PyTorch checkpoint "
            f"(truncated or damaged?): {type(e).__name__}: {detail}",
            stage=_STAGE,
        ) from None


def state_dict_of(checkpoint: Any, label: str, where: str) -> dict[str, torch.Tensor]:
    """The published form ``{"state_dict": {"module.<key>": ...}, ...}`` or a bare state dict."""
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InvalidWeights(
            f"{label} weights {where!r} hold a {type(state).__name__}, not a state dict of tensors", stage=_STAGE
        )
    return {str(k).removeprefix(_DATA_PARALLEL_PREFIX): v for k, v in state.items()}


def _sample(items: list[str]) -> str:
    more = f", ... {len(items) - _SHOWN_KEYS} more" if len(items) > _SHOWN_KEYS else ""
    return ", ".join(items[:_SHOWN_KEYS]) + more


def mismatches(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> list[str]:
    """Human-readable differences between a loaded state dict and the model's own, with counts."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k} (expected {list(v.shape)}, got {list(state[k].shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_sample(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_sample(unexpected)}")
    if misshaped:
        problems.append(f"{len(misshaped)} mis-shaped keys: {_sample(misshaped)}")
    return problems


def _identify(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> str:
    for key, what in _SIGNATURES.items():
        if key in state and key not in expected:
            return f" (this looks like {what})"
    return ""


def check_state_dict(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], label: str, where: str
) -> None:
    problems = mismatches(state, expected)
    if problems:
        raise InvalidWeights(
            f"{label} weights {where!r} do not fit the {label}{_identify(state, expected)}: " + "; ".join(problems),
            stage=_STAGE,
        )
    broken = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise InvalidWeights(
            f"{label} weights {where!r} hold NaN or infinite values in {len(broken)} tensors: {_sample(broken)}",
            stage=_STAGE,
        )


def load_checked(build: Callable[[], M], source: PathOrFile, label: str, device: str | torch.device = "cpu") -> M:
    """The model ``build()`` makes, holding the checkpoint's weights, in eval mode on ``device``;
    InvalidWeights if they do not fit.

    The model is built on the meta device (shapes only, no memory, no random initialisation) and
    takes the checkpoint's tensors as its own (``assign``): the weights are in memory once, not
    twice (a 145 MB Wav2Lip checkpoint: 336 → 190 MB over torch's own footprint), and for a zip
    checkpoint that once is the file's mapped pages, shared by every process that loads it."""
    where = describe(source)
    state = state_dict_of(read_checkpoint(source, label), label, where)
    with torch.device("meta"):
        model = build()
    expected = model.state_dict()
    check_state_dict(state, expected, label, where)
    # assign takes each tensor as it is: one saved in another precision (a half checkpoint) is
    # converted to the model's own, as copying into the model's parameters would have done
    state = {k: v if v.dtype == expected[k].dtype else v.to(expected[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, assign=True)
    return model.to(device).eval()
