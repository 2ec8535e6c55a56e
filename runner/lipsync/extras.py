"""Optional dependencies: what needs them, and the error that says how to install them.

PyTorch is an extra (``pip install 'lipsync-operator[wav2lip]'``): the baseline and command
models, the whole operator and every CLI command but ``score`` run without it. The Wav2Lip model
and ``lipsync score`` ask for it here, before any work, so a missing torch is one clear line
rather than an ImportError deep in a stage.
"""

from __future__ import annotations

from .errors import MissingDependency

TORCH_EXTRA = "wav2lip"
TORCH_INSTALL = f"pip install 'lipsync-operator[{TORCH_EXTRA}]'"
TORCH_CPU_HINT = ("for the CPU-only build, first: pip install torch "
                  "--index-url https://download.pytorch.org/whl/cpu")


def require_torch(feature: str, *, stage: str | None = None) -> None:
    """Raise MissingDependency (exit 26, not retried) naming ``feature`` and the pip command when
    PyTorch cannot be imported."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise MissingDependency(
            f"{feature} needs PyTorch, which is not installed here ({e}): {TORCH_INSTALL} "
            f"({TORCH_CPU_HINT}); the baseline and command models need no torch", stage=stage) from None
