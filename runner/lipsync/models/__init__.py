"""Model registry: a spec's model name → a ready model (weights loaded, before any frame)."""

from __future__ import annotations

from pathlib import Path

from ..spec import LipSyncJobSpec
from .base import ClipJob, ClipModel, FrameModel

__all__ = ["ClipJob", "ClipModel", "FrameModel", "load_model"]


def load_model(spec: LipSyncJobSpec, weights: Path | None) -> FrameModel | ClipModel:
    name = spec.model.name
    options = spec.model.typed_options()
    if name == "baseline":
        from .baseline import BaselineModel

        return BaselineModel(options, spec.face.padding)
    if name == "command":
        from .command import CommandModel

        assert spec.model.command is not None  # the spec's validator requires it for name: command
        return CommandModel.from_spec(spec.model.command, options)
    if name == "latentsync":
        from .latentsync import LatentSyncModel

        return LatentSyncModel.from_spec(options, weights)
    raise NotImplementedError(f"model {name!r} is not available in this build")
