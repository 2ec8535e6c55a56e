"""Remux: the encoded video plus the *original* speech, with its decoded samples kept exactly.

The model's 16 kHz mono resample never reaches the output. Where the speech goes depends on what
it is (``audio_plan``):

- a codec MP4 carries (AAC, MP3, Opus, FLAC, ALAC, AC-3, E-AC-3): copied packet for packet into
  ``output.mp4``;
- integer samples of at most 24 bits (16- and 24-bit PCM WAV, A-law, ...): encoded losslessly to
  FLAC in ``output.mp4``, so the decoded samples stay identical;
- anything finer (32-bit integer or floating-point samples, where FLAC would drop bits and clip
  peaks above full scale): MP4 cannot hold it exactly, so the output becomes ``output.mov``
  (QuickTime, MP4's sibling, which carries PCM of every width) with PCM samples copied (or, for a
  compressed codec that decodes to floats, such as Vorbis, its decoded samples as 32-bit float
  PCM). The switch is stated in the log and in ``metrics.json``.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import ffmpeg

from ..errors import EncodeFailed
from ..io.probe import AudioInfo

MP4_AUDIO = frozenset({"aac", "mp3", "opus", "flac", "alac", "ac3", "eac3"})
FLAC_MAX_BITS = 24  # what ffmpeg's FLAC encoder keeps of an integer sample
_INTEGER_FMTS = {"u8": 8, "u8p": 8, "s16": 16, "s16p": 16, "s32": 32, "s32p": 32}
_PCM_FOR_FMT = {"s32": "pcm_s32le", "s32p": "pcm_s32le", "flt": "pcm_f32le", "fltp": "pcm_f32le",
                "dbl": "pcm_f64le", "dblp": "pcm_f64le", "s64": "pcm_s32le", "s64p": "pcm_s32le"}


@dataclass(frozen=True)
class AudioPlan:
    """How the speech reaches the output: the file it goes into and with which codec.

    ``exact``: the output's decoded samples equal the input's. ``note``: a sentence for the log and
    ``metrics.json`` when the output is not the plain ``output.mp4`` with exact samples."""

    filename: str  # "output.mp4" or "output.mov"
    muxer: str  # ffmpeg's muxer: "mp4" or "mov"
    codec: str  # ffmpeg's audio encoder: "copy", "flac", "pcm_f32le", ...
    exact: bool
    note: str | None = None

    def as_dict(self) -> dict:
        return {"file": self.filename, "container": self.muxer, "codec": self.codec, "exact": self.exact,
                "note": self.note}


def _describe(info: AudioInfo) -> str:
    if info.sample_fmt.startswith(("flt", "dbl")):
        kind = f"{64 if info.sample_fmt.startswith('dbl') else 32}-bit floating-point"
    else:
        kind = f"{info.bits or _INTEGER_FMTS.get(info.sample_fmt, 0)}-bit integer"
    return f"{kind} samples ({info.codec})"


def audio_plan(info: AudioInfo) -> AudioPlan:
    """Where and how the speech described by ``info`` (``probe_audio``) is carried; see the module."""
    if info.codec in MP4_AUDIO:
        return AudioPlan("output.mp4", "mp4", "copy", True)
    width = _INTEGER_FMTS.get(info.sample_fmt)
    bits = info.bits if 0 < info.bits <= (width or 0) else width
    if width is not None and bits is not None and bits <= FLAC_MAX_BITS:
        return AudioPlan("output.mp4", "mp4", "flac", True)
    if info.sample_fmt in _PCM_FOR_FMT:
        codec = "copy" if info.codec.startswith("pcm_") else _PCM_FOR_FMT[info.sample_fmt]
        exact = not info.sample_fmt.startswith("s64")
        note = (f"the speech has {_describe(info)}, which MP4 cannot carry exactly (its lossless FLAC keeps "
                f"{FLAC_MAX_BITS}-bit integers and clips peaks above full scale): the output is output.mov "
                "(QuickTime) with the samples " + ("copied" if codec == "copy" else f"decoded to {codec}"))
        if not exact:
            note += "; 64-bit integer samples are reduced to 32 bits"
        return AudioPlan("output.mov", "mov", codec, exact, note)
    return AudioPlan("output.mp4", "mp4", "flac", False,
                     f"the speech's sample format {info.sample_fmt or 'unknown'!r} ({info.codec}) has no exact "
                     f"carrier here: it is encoded to FLAC ({FLAC_MAX_BITS}-bit), decoded samples may differ")


def remux_command(video: Path, audio: Path, dest: Path, *, plan: AudioPlan, duration: float | None) -> list[str]:
    v = ffmpeg.input(str(video)).video
    a = ffmpeg.input(str(audio)).audio
    kw: dict = {"vcodec": "copy", "acodec": plan.codec, "format": plan.muxer, "movflags": "+faststart",
                "strict": "-2", "loglevel": "error", "map_metadata": -1}
    if duration is not None:
        kw["t"] = f"{duration:.6f}"
    return ffmpeg.output(v, a, str(dest), **kw).overwrite_output().compile()


def remux(video: Path, audio: Path, dest: Path, *, plan: AudioPlan, duration: float | None) -> None:
    """Mux ``video`` (stream-copied) with the speech in ``audio`` as ``plan`` says, into ``dest``."""
    proc = subprocess.run(remux_command(video, audio, dest, plan=plan, duration=duration), capture_output=True)
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        raise EncodeFailed(f"muxing the original audio failed ({lines[-1] if lines else proc.returncode})", stage="remux")
