"""Remux: the encoded video plus the *original* speech, stream-copied.

The model's 16 kHz mono resample never reaches the output. A codec MP4 can carry is copied
packet for packet; one it cannot (PCM from a WAV, Vorbis) is encoded losslessly to FLAC, so the
decoded samples stay identical.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import ffmpeg

from ..errors import EncodeFailed

MP4_AUDIO = frozenset({"aac", "mp3", "opus", "flac", "alac", "ac3", "eac3"})


def audio_codec_for(codec: str) -> str:
    return "copy" if codec in MP4_AUDIO else "flac"


def remux_command(video: Path, audio: Path, dest: Path, *, audio_codec: str, duration: float | None) -> list[str]:
    v = ffmpeg.input(str(video)).video
    a = ffmpeg.input(str(audio)).audio
    kw: dict = {"vcodec": "copy", "acodec": audio_codec_for(audio_codec), "movflags": "+faststart",
                "strict": "-2", "loglevel": "error", "map_metadata": -1}
    if duration is not None:
        kw["t"] = f"{duration:.6f}"
    return ffmpeg.output(v, a, str(dest), **kw).overwrite_output().compile()


def remux(video: Path, audio: Path, dest: Path, *, audio_codec: str, duration: float | None) -> None:
    proc = subprocess.run(remux_command(video, audio, dest, audio_codec=audio_codec, duration=duration),
                          capture_output=True)
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        raise EncodeFailed(f"muxing the original audio failed ({lines[-1] if lines else proc.returncode})", stage="remux")
