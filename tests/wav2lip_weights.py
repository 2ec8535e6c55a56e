"""Deterministic Wav2Lip weights by the conformance README's formula, for tests without real weights.

The formula (``tests/data/wav2lip-reference/README.md``) gives every tensor of the published layout
values whose forward pass is recorded in ``wav2lip_out_reference.npy``; a checkpoint written here
therefore checks the loader and the network together, and lets end-to-end tests run Wav2Lip
without downloading the real 400 MB checkpoint.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

REFERENCE_DIR = Path(__file__).resolve().parent / "data" / "wav2lip-reference"


_ADAM_GROUP = {"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0, "amsgrad": False, "params": [0, 1]}


def manifest_layout(model: str = "wav2lip") -> list[tuple[str, list[int]]]:
    """(key, shape) of every tensor of ``model`` in the manifest, in checkpoint order."""
    manifest = json.loads((REFERENCE_DIR / "manifest.json").read_text())
    return list(manifest[model]["state_dict"].items())


def formula_tensor(key: str, shape: list[int], index: int) -> torch.Tensor:
    """The README's value for the ``index``-th key: a hash-like sine noise, scaled per kind of tensor."""
    numel = int(np.prod(shape, dtype=np.int64))
    t = np.arange(numel, dtype=np.float64)
    h = np.sin(12.9898 * t + 78.233 * index) * 43758.5453
    s = 2.0 * (h - np.floor(h)) - 1.0
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    if key.endswith("running_var"):
        values = 1.0 + 0.5 * np.abs(s)
    elif key.endswith("running_mean"):
        values = 0.1 * s
    elif len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        values = s * 1.2 * np.sqrt(3.0 / fan_in)
    elif key.endswith(".weight"):
        values = 1.0 + 0.25 * s
    else:
        values = 0.1 * s
    return torch.from_numpy(values.reshape(shape).astype(np.float32))


def formula_state_dict(model: str = "wav2lip") -> "OrderedDict[str, torch.Tensor]":
    return OrderedDict(
        (key, formula_tensor(key, shape, i)) for i, (key, shape) in enumerate(manifest_layout(model))
    )


def write_formula_checkpoint(path: str | Path, *, published_form: bool = True, model: str = "wav2lip") -> Path:
    """Write the formula weights of ``model`` ("wav2lip" or "syncnet_color") to ``path``; by default
    as published (DataParallel ``module.`` keys under ``"state_dict"``, with optimizer state and
    training counters beside it), else as a bare state dict."""
    state = formula_state_dict(model)
    if published_form:
        checkpoint: object = {
            "state_dict": OrderedDict((f"module.{k}", v) for k, v in state.items()),
            # The published files also carry Adam's state: its plain types must pass weights_only.
            "optimizer": {"state": {}, "param_groups": [_ADAM_GROUP]},
            "global_step": 0,
            "global_epoch": 0,
        }
    else:
        checkpoint = state
    path = Path(path)
    torch.save(checkpoint, path)
    return path
