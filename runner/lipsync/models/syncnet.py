"""Wav2Lip's colour SyncNet: the expert lip-sync discriminator (``lipsync_expert.pth``).

It embeds 5 consecutive mouth crops and the matching 0.2 s mel window into one 512-d space, so
that the cosine similarity of the two embeddings says how well lips and speech agree. That makes
it the measuring stick for the lip-sync quality metrics (LSE-C / LSE-D style scores) of renders.
The layout mirrors the published checkpoint key for key (``manifest.json["syncnet_color"]``).

Inputs: faces (B, 15, 48, 96) = 5 frames x BGR of the lower half of 96 px crops, in [0, 1];
audio (B, 1, 80, 16). Outputs: audio and face embeddings, each (B, 512), L2-normalised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import PathOrFile, load_checked
from .wav2lip import ConvBlock, conv_chain


class SyncNetColor(nn.Module):
    """Two encoders into a shared 512-d embedding space; flat Sequentials as in the checkpoint."""

    def __init__(self) -> None:
        super().__init__()
        self.face_encoder = nn.Sequential(  # 48x96 -> 46x47 -> 23x24 -> 12x12 -> 6x6 -> 3x3 -> 1x1
            ConvBlock(15, 32, 7, 1, 3),
            *conv_chain(ConvBlock(32, 64, 5, (1, 2), 1), 2, 64),
            *conv_chain(ConvBlock(64, 128, 3, 2, 1), 3, 128),
            *conv_chain(ConvBlock(128, 256, 3, 2, 1), 2, 256),
            *conv_chain(ConvBlock(256, 512, 3, 2, 1), 2, 512),
            ConvBlock(512, 512, 3, 2, 1),
            ConvBlock(512, 512, 3, 1, 0),
            ConvBlock(512, 512, 1, 1, 0),
        )
        self.audio_encoder = nn.Sequential(  # 80x16 -> 27x16 -> 9x6 -> 3x3 -> 1x1
            *conv_chain(ConvBlock(1, 32, 3, 1, 1), 2, 32),
            *conv_chain(ConvBlock(32, 64, 3, (3, 1), 1), 2, 64),
            *conv_chain(ConvBlock(64, 128, 3, 3, 1), 2, 128),
            *conv_chain(ConvBlock(128, 256, 3, (3, 2), 1), 2, 256),
            ConvBlock(256, 512, 3, 1, 0),
            ConvBlock(512, 512, 1, 1, 0),
        )

    def embed_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, 1, 80, 16) -> (B, 512) unit length. Apart from ``forward``: scoring embeds each side
        once and compares it with the other at many offsets."""
        return F.normalize(self.audio_encoder(audio).flatten(1), p=2, dim=1)

    def embed_faces(self, faces: torch.Tensor) -> torch.Tensor:
        """(B, 15, 48, 96) -> (B, 512) unit length."""
        return F.normalize(self.face_encoder(faces).flatten(1), p=2, dim=1)

    def forward(self, audio: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, 80, 16) + (B, 15, 48, 96) -> unit-length audio and face embeddings, (B, 512) each."""
        return self.embed_audio(audio), self.embed_faces(faces)


def load_syncnet(source: PathOrFile, device: str | torch.device = "cpu") -> SyncNetColor:
    """The expert with the checkpoint's weights, eval mode; InvalidWeights as for the generator."""
    return load_checked(SyncNetColor, source, "SyncNet expert", device)
