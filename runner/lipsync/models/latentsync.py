"""LatentSync, run through its own inference entry point: a preset of the command contract.

What LatentSync's code expects (bytedance/LatentSync at a229c39, ``scripts/inference.py`` and
``inference.sh``), and how the preset meets it:

- ``python -m scripts.inference --unet_config_path configs/unet/stage2.yaml`` (1.5, 256 px) or
  ``stage2_512.yaml`` (1.6, 512 px), ``--inference_ckpt_path``, ``--inference_steps``,
  ``--guidance_scale``, ``--seed``, ``--video_path``, ``--audio_path``, ``--video_out_path``.
- It opens ``configs/…``, ``checkpoints/whisper/tiny.pt`` and ``checkpoints/auxiliary`` (the
  InsightFace detector) relative to the working directory, and writes a ``temp/`` folder there.
  So it runs in a per-job folder that links every entry of the checkout (``LATENTSYNC_HOME``,
  default /opt/latentsync: it stays read-only and shared) and holds its own ``checkpoints/``:
  the image's checkpoints, overlaid by the job's ``spec.model.weights`` folder.
- It works at 25 fps whatever it is given (it re-encodes its input with ``-r 25``), and makes
  one frame per whisper window, which runs one or two windows past the end of the audio
  (``feature2chunks`` stops only once past it; the surplus is filled by its own ping-pong loop of
  the clip). So its clip is declared at 25 fps, converted back to the crop clip's rate when read,
  and up to ``EXTRA_FRAMES`` trailing frames are dropped.
- It reads the Stable Diffusion VAE through the Hugging Face cache: ``HF_HUB_OFFLINE=1``, so a
  missing cache fails at once instead of downloading at run time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from ..errors import InvalidWeights, ModelFailed
from ..spec import LatentSyncOptions
from .base import ClipJob
from .command import CommandModel

DEFAULT_HOME = "/opt/latentsync"
VERSIONS = {"1.5": ("configs/unet/stage2.yaml", 256), "1.6": ("configs/unet/stage2_512.yaml", 512)}
CHECKPOINTS = ("latentsync_unet.pt", "whisper/tiny.pt")  # what scripts/inference.py loads
FPS = Fraction(25)
EXTRA_FRAMES = 3
AUDIO_RATE = 16000  # whisper's rate


@dataclass(frozen=True, kw_only=True)
class LatentSyncModel(CommandModel):
    home: Path
    weights: Path

    @classmethod
    def from_spec(cls, options: LatentSyncOptions, weights: Path | None) -> "LatentSyncModel":
        home = Path(os.environ.get("LATENTSYNC_HOME", DEFAULT_HOME))
        if not (home / "scripts" / "inference.py").is_file():
            raise ModelFailed(f"LatentSync is not installed at {home} (no scripts/inference.py): "
                              "set LATENTSYNC_HOME to its checkout", stage="model")
        folder = check_weights(weights, home)
        python = os.environ.get("LATENTSYNC_PYTHON", str(home / ".venv" / "bin" / "python"))
        config, size = VERSIONS[options.version]
        argv = (python, "-m", "scripts.inference",
                "--unet_config_path", config,
                "--inference_ckpt_path", "checkpoints/latentsync_unet.pt",
                "--inference_steps", str(options.inference_steps),
                "--guidance_scale", str(options.guidance_scale),
                "--seed", str(options.seed),
                *(("--enable_deepcache",) if options.deep_cache else ()),
                "--video_path", "{video}", "--audio_path", "{audio}", "--video_out_path", "{output}")
        return cls(argv=argv, crop_size=size, audio_rate=AUDIO_RATE, timeout_s=float(options.timeout_seconds),
                   name="latentsync", env={"HF_HUB_OFFLINE": "1"}, output_fps=FPS, extra_frames=EXTRA_FRAMES,
                   home=home, weights=folder)

    def workdir(self, job: ClipJob) -> Path:
        """A private copy of the checkout made of links, with ``checkpoints/`` from the weights."""
        run = job.output.parent / "latentsync"
        run.mkdir(exist_ok=True)
        for entry in self.home.iterdir():
            if entry.name not in ("checkpoints", "temp"):
                _link(run / entry.name, entry)
        ckpt = run / "checkpoints"
        ckpt.mkdir(exist_ok=True)
        for source in (self.home / "checkpoints", self.weights):  # the job's weights win
            if source.is_dir():
                for entry in source.iterdir():
                    _link(ckpt / entry.name, entry.resolve())
        return run


def check_weights(weights: Path | None, home: Path) -> Path:
    """The weights folder, once it (or the image's checkpoints) holds every file LatentSync loads."""
    if weights is None or not weights.is_dir():
        raise InvalidWeights(f"spec.model.weights {str(weights)!r} must be a folder (or an s3:// prefix ending in /) "
                             f"laid out as LatentSync's checkpoints/: {', '.join(CHECKPOINTS)}", stage="model")
    missing = [name for name in CHECKPOINTS
               if not any((d / name).is_file() for d in (weights, home / "checkpoints"))]
    if missing:
        raise InvalidWeights(f"spec.model.weights {str(weights)!r} lacks {', '.join(missing)} "
                             f"(LatentSync loads {', '.join(CHECKPOINTS)})", stage="model")
    return weights


def _link(link: Path, target: Path) -> None:
    if link.is_symlink():
        link.unlink()
    link.symlink_to(target)
