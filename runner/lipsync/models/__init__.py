"""Model registry: a spec's model name → a ready model (weights loaded, before any frame)."""

from __future__ import annotations

from pathlib import Path

from ..spec import LipSyncJobSpec
from ..errors import InvalidWeights
from ..extras import require_torch
from .base import ClipJob, ClipModel, FrameModel

__all__ = ["ClipJob", "ClipModel", "FrameModel", "check_dependencies", "load_model"]


TORCH_MODELS = frozenset({"wav2lip"})  # the models that run in this process on PyTorch (the [wav2lip] extra)


def check_dependencies(spec: LipSyncJobSpec) -> None:
    """MissingDependency, before anything is fetched, when the spec's model needs what is not installed."""
    if spec.model.name in TORCH_MODELS:
        require_torch(f"model {spec.model.name!r}", stage="fetch")


def load_model(spec: LipSyncJobSpec, weights: Path | None) -> FrameModel | ClipModel:
    name = spec.model.name
    options = spec.model.typed_options()
    if name == "baseline":
        from .baseline import BaselineModel

        return BaselineModel(options, spec.padding)
    if name == "command":
        from .command import CommandModel

        assert spec.model.command is not None  # the spec's validator requires it for name: command
        return CommandModel.from_spec(spec.model.command, options)
    if name == "latentsync":
        from .latentsync import LatentSyncModel

        return LatentSyncModel.from_spec(options, weights)
    check_dependencies(spec)
    from .wav2lip import Wav2LipModel

    return Wav2LipModel.from_spec(spec.model, _required(weights, name))


def _required(weights: Path | None, name: str) -> Path:
    if weights is None:  # the spec's validator requires weights for these models
        raise InvalidWeights(f"model {name!r} needs spec.model.weights", stage="model")
    return weights
