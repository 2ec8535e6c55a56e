"""Wav2Lip (Prajwal et al., 2020): the generator, a strict checkpoint loader, and its FrameModel.

The module tree mirrors the published one attribute for attribute, because the published
checkpoints (``wav2lip.pth``, ``wav2lip_gan.pth``) are plain state dicts: the names and the order
of ``state_dict()`` must equal ``manifest.json["wav2lip"]`` for them to load at all.

Shapes: audio (B, 1, 80, 16) mel window, face (B, 6, 96, 96) = target frame with its lower half
zeroed + reference frame, BGR in [0, 1]; output (B, 3, 96, 96) BGR in (0, 1). The face encoder
takes 96 px down to 1 px in seven stages whose outputs feed the decoder as U-Net skips; the audio
encoder takes the mel window to a (B, 512, 1, 1) embedding that seeds the decoder.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from ..errors import DeviceUnavailable
from ..mel import WINDOW_STEPS, mel_spectrogram, pad_to_window, window_starts
from ..spec import ModelSpec, Wav2LipOptions
from .checkpoint import PathOrFile, load_checked

logger = logging.getLogger(__name__)

CROP_SIZE = 96
AUDIO_RATE = 16000
DEFAULT_BATCH_SIZE = {"cpu": 16, "cuda": 128}
_STAGE = "model"


# ---------------------------------------------------------------------------- the network
class ConvBlock(nn.Module):
    """Conv (or transposed conv) + BatchNorm + ReLU; ``residual`` adds the input before the ReLU.

    The attribute name ``conv_block`` and its two children are fixed by the checkpoint keys.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int | tuple[int, int] = 1,
        padding: int = 1,
        *,
        residual: bool = False,
        transpose: bool = False,
    ) -> None:
        super().__init__()
        conv: nn.Module
        if transpose:  # every upsampling stage of Wav2Lip doubles the side (3 -> 6 -> ... -> 96)
            extra = 1 if stride != 1 else 0
            conv = nn.ConvTranspose2d(cin, cout, kernel, stride, padding, output_padding=extra)
        else:
            conv = nn.Conv2d(cin, cout, kernel, stride, padding)
        self.conv_block = nn.Sequential(conv, nn.BatchNorm2d(cout))
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place on the BatchNorm's fresh output: two fewer full-size allocations per block,
        # and still differentiable (neither BatchNorm's nor the addition's backward needs it).
        out = self.conv_block(x)
        if self.residual:
            out += x
        return torch.relu_(out)


def res_block(channels: int) -> ConvBlock:
    """A shape-preserving 3x3 residual block (the bulk of every stage)."""
    return ConvBlock(channels, channels, 3, 1, 1, residual=True)


def conv_chain(head: ConvBlock, n_res: int, channels: int) -> list[ConvBlock]:
    """``head`` then ``n_res`` residual blocks: how both Wav2Lip networks build their stages."""
    return [head, *(res_block(channels) for _ in range(n_res))]


def _stage(head: ConvBlock, n_res: int, channels: int) -> nn.Sequential:
    return nn.Sequential(*conv_chain(head, n_res, channels))


def _up(cin: int, cout: int, stride: int = 2, padding: int = 1) -> ConvBlock:
    return ConvBlock(cin, cout, 3, stride, padding, transpose=True)


class Wav2Lip(nn.Module):
    """The Wav2Lip generator, eval-time forward only (single frames, not the 5-D training batches)."""

    def __init__(self) -> None:
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList(
            [
                nn.Sequential(ConvBlock(6, 16, 7, 1, 3)),  # 96
                _stage(ConvBlock(16, 32, 3, 2, 1), 2, 32),  # 48
                _stage(ConvBlock(32, 64, 3, 2, 1), 3, 64),  # 24
                _stage(ConvBlock(64, 128, 3, 2, 1), 2, 128),  # 12
                _stage(ConvBlock(128, 256, 3, 2, 1), 2, 256),  # 6
                _stage(ConvBlock(256, 512, 3, 2, 1), 1, 512),  # 3
                nn.Sequential(ConvBlock(512, 512, 3, 1, 0), ConvBlock(512, 512, 1, 1, 0)),  # 1
            ]
        )
        # One flat Sequential (keys audio_encoder.0 .. .12): (80, 16) -> 27x16 -> 9x6 -> 3x3 -> 1x1.
        self.audio_encoder = nn.Sequential(
            *conv_chain(ConvBlock(1, 32, 3, 1, 1), 2, 32),
            *conv_chain(ConvBlock(32, 64, 3, (3, 1), 1), 2, 64),
            *conv_chain(ConvBlock(64, 128, 3, 3, 1), 2, 128),
            *conv_chain(ConvBlock(128, 256, 3, (3, 2), 1), 1, 256),
            ConvBlock(256, 512, 3, 1, 0),
            ConvBlock(512, 512, 1, 1, 0),
        )
        self.face_decoder_blocks = nn.ModuleList(
            [
                nn.Sequential(ConvBlock(512, 512, 1, 1, 0)),  # 1
                _stage(_up(1024, 512, stride=1, padding=0), 1, 512),  # 3
                _stage(_up(1024, 512), 2, 512),  # 6
                _stage(_up(768, 384), 2, 384),  # 12
                _stage(_up(512, 256), 2, 256),  # 24
                _stage(_up(320, 128), 2, 128),  # 48
                _stage(_up(160, 64), 2, 64),  # 96
            ]
        )
        self.output_block = nn.Sequential(
            ConvBlock(80, 32, 3, 1, 1), nn.Conv2d(32, 3, 1, 1, 0), nn.Sigmoid()
        )

    def forward(self, audio: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        """(B, 1, 80, 16) mel windows + (B, 6, 96, 96) faces -> (B, 3, 96, 96) faces in (0, 1)."""
        skips = []
        x = face
        for block in self.face_encoder_blocks:
            x = block(x)
            skips.append(x)
        x = self.audio_encoder(audio)
        for block in self.face_decoder_blocks:
            x = torch.cat((block(x), skips.pop()), dim=1)
        return self.output_block(x)


# ---------------------------------------------------------------------------- loading
def load_wav2lip(source: PathOrFile, device: str | torch.device = "cpu") -> Wav2Lip:
    """The generator with the checkpoint's weights, in eval mode on ``device``.

    Accepts the published form and a bare state dict. Raises InvalidWeights, naming what is
    wrong, for a missing, unreadable or truncated file, for another model's checkpoint and for
    wrong shapes: a bad checkpoint must fail the job before any frame is decoded.
    """
    return load_checked(Wav2Lip, source, "Wav2Lip generator", device)


# ---------------------------------------------------------------------------- device choice
def resolve_device(requested: str) -> torch.device:
    """``cuda`` must exist when asked for by name; ``auto`` falls back to the CPU, loudly."""
    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        raise DeviceUnavailable(
            "spec.model.options.device is 'cuda' but no CUDA device is visible to the runner", stage=_STAGE
        )
    if requested == "auto" and not has_cuda:
        logger.warning("no CUDA device visible: Wav2Lip runs on the CPU, which is far slower")
    return torch.device("cuda" if has_cuda and requested != "cpu" else "cpu")


def resolve_autocast(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32.

    Reduced precision is only used on CUDA: the network was trained in fp32, and on CPUs
    autocast of these convolutions is rarely faster, so a CPU run stays fp32 whatever is asked.
    """
    if device.type != "cuda":
        if precision in ("fp16", "bf16"):
            logger.warning("precision %s is for CUDA only: Wav2Lip runs in fp32 on the CPU", precision)
        return None
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        logger.warning("this GPU has no bf16 support: Wav2Lip runs with fp16 autocast instead")
        return torch.float16
    return {"auto": torch.float16, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}[precision]


# ---------------------------------------------------------------------------- the FrameModel
class Wav2LipModel:
    """Wav2Lip as a FrameModel: 96 px BGR crops in, the same crops with a synced mouth out."""

    name = "wav2lip"
    crop_size: int = CROP_SIZE
    audio_rate: int = AUDIO_RATE
    pad_batches = True  # one batch shape per process: cuDNN autotunes once
    uses_torch = True  # each chunk worker holds torch, the weights and activations (chunks.render.worker_bytes)

    def __init__(
        self, net: Wav2Lip, *, device: torch.device, autocast: torch.dtype | None = None, batch_size: int | None = None
    ) -> None:
        self.net = net.to(device).eval()
        self.device = device
        self.autocast = autocast
        self.batch_size = batch_size or DEFAULT_BATCH_SIZE[device.type]
        self._mel: torch.Tensor | None = None  # (80, T) padded to at least one window
        self._starts: np.ndarray | None = None  # (n_frames,) first mel column per output frame
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels

    @classmethod
    def from_spec(cls, model_spec: ModelSpec, weights_path: PathOrFile) -> "Wav2LipModel":
        """Resolve the device and precision, and load the weights now, before any frame is decoded."""
        options = Wav2LipOptions.model_validate(model_spec.options)
        device = resolve_device(options.device)
        net = load_wav2lip(weights_path, device)
        return cls(
            net, device=device, autocast=resolve_autocast(options.precision, device), batch_size=options.batch_size
        )

    def prepare(self, audio: np.ndarray, fps: float, n_frames: int) -> None:
        """Compute the mel once; each frame's 16-column window is cut from it at infer time."""
        mel = pad_to_window(mel_spectrogram(audio))
        self._starts = window_starts(fps, n_frames, mel.shape[1])
        self._mel = torch.from_numpy(mel).to(self.device)

    def infer(self, crops: np.ndarray, frames: np.ndarray) -> np.ndarray:
        """(B, 96, 96, 3) uint8 BGR crops at output frames ``frames`` -> synced crops, same shape."""
        if self._mel is None or self._starts is None:
            raise RuntimeError("Wav2LipModel.infer called before prepare()")
        side = self.crop_size
        if crops.ndim != 4 or crops.shape[1:] != (side, side, 3) or crops.dtype != np.uint8:
            raise ValueError(f"crops must be (B, {side}, {side}, 3) uint8, got {crops.shape} {crops.dtype}")
        frames = np.asarray(frames, dtype=np.int64)
        if frames.shape != (len(crops),) or (len(frames) and not 0 <= frames.min() <= frames.max() < len(self._starts)):
            raise ValueError(f"frames must be {len(crops)} indices in [0, {len(self._starts)}), got {frames}")
        out = [
            self._infer_batch(crops[i : i + self.batch_size], frames[i : i + self.batch_size])
            for i in range(0, len(crops), self.batch_size)
        ]
        return np.concatenate(out) if out else crops.copy()

    @torch.inference_mode()
    def _infer_batch(self, crops: np.ndarray, frames: np.ndarray) -> np.ndarray:
        assert self._mel is not None and self._starts is not None
        starts = torch.from_numpy(self._starts[frames]).to(self.device)
        audio = self._mel.unfold(1, WINDOW_STEPS, 1)[:, starts].permute(1, 0, 2).unsqueeze(1)  # (B, 1, 80, 16)
        # uint8 crosses to the device (4x less than float), then HWC->CHW and scaling happen there;
        # copied, so views (negative strides) and read-only arrays are fine.
        pixels_in = torch.tensor(np.ascontiguousarray(crops), device=self.device)
        target = pixels_in.permute(0, 3, 1, 2).float().div_(255.0)
        masked = target.clone()
        masked[:, :, self.crop_size // 2 :] = 0.0  # as trained: the mouth half is hidden from the net
        face = torch.cat((masked, target), dim=1)  # reference frame = the crop itself, as at inference
        with torch.autocast(self.device.type, dtype=self.autocast) if self.autocast else nullcontext():
            pred = self.net(audio, face)
        # Rounded, not truncated as the original script does, which darkens by half a level.
        pixels = pred.float().mul_(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8)
        return pixels.permute(0, 2, 3, 1).contiguous().cpu().numpy()

