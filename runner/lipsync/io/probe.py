"""Probe: what ffprobe says about an input, reduced to the facts the pipeline plans with."""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import ffmpeg

from ..errors import InvalidMedia, NoAudioStream, NoVideoStream


@dataclass(frozen=True)
class VideoInfo:
    width: int  # as displayed, after rotation
    height: int
    fps: Fraction  # the constant rate frames are decoded at (through an fps filter, whatever the input)
    variable_rate: bool  # as far as the container tells: informational
    rotation: int  # degrees, as recorded in the file (ffmpeg applies it when decoding)
    duration: float
    codec: str
    frames_estimate: int
    pix_fmt: str = "yuv420p"  # as decoded (ffmpeg's name)
    colour: "Colour" = None  # type: ignore[assignment]  # what the stream declares (see Colour)
    start_time: float = 0.0  # seconds: the video stream's first timestamp (frame 0 of the fps grid)
    sample_aspect_ratio: str | None = None  # "N:M" when the stream declares non-square pixels
    container: str = ""  # ffprobe's format_name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    bits: int = 8  # bits per sample of the decoded picture

    def __post_init__(self) -> None:
        if self.colour is None:
            object.__setattr__(self, "colour", Colour())


@dataclass(frozen=True)
class Colour:
    """The colour description a video stream declares (ffmpeg's names; None: not declared).

    ``matrix`` is the YUV↔RGB matrix (bt709, smpte170m, bt470bg, bt2020nc, ...), ``primaries`` and
    ``transfer`` the RGB space and its curve, ``range`` "tv" (limited) or "pc" (full).
    """

    matrix: str | None = None
    primaries: str | None = None
    transfer: str | None = None
    range: str | None = None


@dataclass(frozen=True)
class AudioInfo:
    codec: str
    sample_rate: int  # Hz
    channels: int
    duration: float  # seconds: from the header, or counted from the decoded samples when it has none
    sample_fmt: str = ""  # ffmpeg's decoded sample format: s16, s32, flt, fltp, dbl, ...
    bits: int = 0  # significant bits per sample when ffprobe knows them (bits_per_raw_sample), else 0
    duration_from: str = "header"  # "header", or "decoded" where the file states no duration (browser WebM)


def _ffprobe(path: Path, field: str) -> dict:
    try:
        return ffmpeg.probe(str(path))
    except ffmpeg.Error as e:
        detail = (e.stderr or b"").decode(errors="replace").strip().splitlines()
        last = detail[-1] if detail else "ffprobe failed"
        raise InvalidMedia(f"{field} {str(path)!r} cannot be read as media ({last}): is the file complete?", stage="probe") from None


def _rate(text: str | None) -> Fraction | None:
    if not text or text in ("0/0", "0"):
        return None
    try:
        r = Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None
    return r if r > 0 else None


COMMON_RATES = tuple(Fraction(r) for r in ("24000/1001", "24", "25", "30000/1001", "30", "50", "60000/1001", "60"))


def _constant_rate(average: Fraction) -> Fraction:
    """The constant rate to decode a variable-rate video at: its average, snapped to a common
    rate within 2 % (phones record ~29.97 with jitter), else the average itself."""
    near = min(COMMON_RATES, key=lambda c: abs(float(c) - float(average)))
    if abs(float(near) - float(average)) <= 0.02 * float(near):
        return near
    return average.limit_denominator(1001)


def _rotation(stream: dict) -> int:
    rot = 0
    if "rotate" in stream.get("tags", {}):
        rot = int(float(stream["tags"]["rotate"]))
    for side in stream.get("side_data_list", []):
        if "rotation" in side:
            rot = -int(float(side["rotation"]))
    return rot % 360


def _duration(probe: dict, stream: dict) -> float:
    for src in (stream.get("duration"), probe.get("format", {}).get("duration")):
        try:
            if src is not None and float(src) > 0:
                return float(src)
        except ValueError:
            pass
    return 0.0


def _declared(value: object) -> str | None:
    text = str(value) if value is not None else ""
    return None if text in ("", "unknown", "unspecified", "reserved") else text


def _colour(stream: dict) -> Colour:
    fmt = stream.get("pix_fmt", "")
    rng = _declared(stream.get("color_range"))
    if rng is None and fmt.startswith("yuvj"):  # the deprecated full-range pixel formats
        rng = "pc"
    return Colour(_declared(stream.get("color_space")), _declared(stream.get("color_primaries")),
                  _declared(stream.get("color_transfer")), rng)


def _bits(stream: dict) -> int:
    for key in ("bits_per_raw_sample",):
        try:
            if int(stream.get(key, 0)) > 0:
                return int(stream[key])
        except (TypeError, ValueError):
            pass
    m = re.search(r"p(9|10|12|14|16)(le|be)?$", stream.get("pix_fmt", ""))
    return int(m.group(1)) if m else 8


def _start(stream: dict) -> float:
    try:
        return float(stream.get("start_time", 0.0))
    except (TypeError, ValueError):
        return 0.0


def probe_video(path: Path, field: str = "spec.video") -> VideoInfo:
    info = _ffprobe(path, field)
    streams = [s for s in info.get("streams", []) if s.get("codec_type") == "video"
               and not s.get("disposition", {}).get("attached_pic")]
    if not streams:
        raise NoVideoStream(f"{field} {str(path)!r} has no video stream: give a video file", stage="probe")
    s = streams[0]
    r_rate, avg_rate = _rate(s.get("r_frame_rate")), _rate(s.get("avg_frame_rate"))
    fps = avg_rate or r_rate
    if fps is None:
        raise InvalidMedia(f"{field} {str(path)!r}: ffprobe reports no frame rate", stage="probe")
    variable = r_rate is not None and avg_rate is not None and abs(float(r_rate) - float(avg_rate)) > 0.01
    if variable and avg_rate is not None:
        fps = _constant_rate(avg_rate)
    width, height = int(s.get("width", 0)), int(s.get("height", 0))
    if width <= 0 or height <= 0:
        raise InvalidMedia(f"{field} {str(path)!r}: the video stream has no picture size", stage="probe")
    rotation = _rotation(s)
    if rotation in (90, 270):
        width, height = height, width
    duration = _duration(info, s)
    sar = s.get("sample_aspect_ratio")
    return VideoInfo(width, height, fps, variable, rotation, duration, s.get("codec_name", "?"),
                     int(round(duration * float(fps))), pix_fmt=s.get("pix_fmt", "yuv420p"), colour=_colour(s),
                     start_time=_start(s), sample_aspect_ratio=sar if sar not in (None, "0:1", "1:1", "N/A") else None,
                     container=info.get("format", {}).get("format_name", ""), bits=_bits(s))


def probe_audio(path: Path, field: str = "spec.audio") -> AudioInfo:
    """The speech stream's facts. A file that states no duration (WebM/Opus as browsers record it,
    streamed Ogg, ...) is timed from its decoded samples rather than refused; InvalidMedia when
    nothing decodes, NoAudioStream when there is no audio stream."""
    info = _ffprobe(path, field)
    streams = [s for s in info.get("streams", []) if s.get("codec_type") == "audio"]
    if not streams:
        raise NoAudioStream(f"{field} {str(path)!r} has no audio stream: give a speech file (WAV, AAC, MP3, Opus, FLAC)", stage="probe")
    s = streams[0]
    rate = int(s.get("sample_rate", 0) or 0)
    duration, source = _duration(info, s), "header"
    if duration <= 0:
        duration, source = decoded_duration(path, rate, field), "decoded"
    if duration <= 0:
        raise InvalidMedia(f"{field} {str(path)!r}: the audio stream decodes to no samples", stage="probe")
    try:
        bits = int(s.get("bits_per_raw_sample") or s.get("bits_per_sample") or 0)
    except ValueError:
        bits = 0
    return AudioInfo(s.get("codec_name", "?"), rate, int(s.get("channels", 0)), duration,
                     str(s.get("sample_fmt", "")), bits, source)


def decoded_duration(path: Path, rate: int, field: str = "spec.audio") -> float:
    """Seconds of audio the first audio stream decodes to, counted sample by sample (mono 16-bit at
    the stream's own rate, streamed through a pipe and discarded: nothing is held)."""
    rate = rate if rate > 0 else 48000
    argv = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0", "-ac", "1", "-ar", str(rate),
            "-f", "s16le", "pipe:1"]
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: a chatty ffmpeg cannot block on it
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors)
        assert proc.stdout is not None
        size = 0
        while chunk := proc.stdout.read(1 << 20):
            size += len(chunk)
        code = proc.wait()
        errors.seek(0)
        err = errors.read().decode(errors="replace").strip().splitlines()
    if code != 0:
        raise InvalidMedia(f"{field} {str(path)!r} states no duration and does not decode "
                           f"({err[-1] if err else code}): is the file complete?", stage="probe")
    return size / 2 / rate
