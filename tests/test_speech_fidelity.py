"""The speech reaches the output with its decoded samples intact, whatever its sample format, and
a speech file that states no duration (WebM/Opus as browsers record it) is timed from its data."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from lipsync.io.probe import AudioInfo, probe_audio
from lipsync.pipeline import run_job
from lipsync.spec import load_jobs
from lipsync.video.remux import audio_plan

from .media import clip, ffmpeg, job_file, probe, stream

RATE = 48000


def tone_speech(seconds: float, peak: float = 0.9) -> np.ndarray:
    """Mono float64 speech-like signal (a vowel's harmonics under a syllable envelope), peaking at ``peak``."""
    t = np.arange(int(round(seconds * RATE))) / RATE
    voice = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((140, 280, 420, 700, 1100), 1))
    syllables = 0.5 - 0.5 * np.cos(2 * np.pi * 4.0 * t)
    x = voice * syllables
    return x * (peak / np.abs(x).max())


def write_raw(dest: Path, samples: np.ndarray, raw_fmt: str, *codec_args: str) -> Path:
    raw = dest.with_suffix(".raw")
    raw.write_bytes(samples.tobytes())
    ffmpeg("-f", raw_fmt, "-ar", str(RATE), "-ac", "1", "-i", str(raw), *codec_args, str(dest))
    raw.unlink()
    return dest


def decoded(path: Path, raw_fmt: str) -> bytes:
    """The first audio stream's decoded samples in ``raw_fmt`` (the input's own format: no conversion)."""
    return subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(path), "-map", "0:a:0", "-f", raw_fmt, "-"],
                          capture_output=True, check=True).stdout


# ------------------------------------------------------------------ where each format goes (no render)
@pytest.mark.parametrize("info,expected", [
    (AudioInfo("aac", RATE, 2, 1.0, "fltp", 0), ("output.mp4", "mp4", "copy", True)),
    (AudioInfo("opus", RATE, 1, 1.0, "fltp", 0), ("output.mp4", "mp4", "copy", True)),
    (AudioInfo("pcm_s16le", RATE, 2, 1.0, "s16", 16), ("output.mp4", "mp4", "flac", True)),
    (AudioInfo("pcm_s24le", RATE, 2, 1.0, "s32", 24), ("output.mp4", "mp4", "flac", True)),
    (AudioInfo("pcm_mulaw", 8000, 1, 1.0, "s16", 0), ("output.mp4", "mp4", "flac", True)),
    (AudioInfo("pcm_s32le", RATE, 1, 1.0, "s32", 32), ("output.mov", "mov", "copy", True)),
    (AudioInfo("pcm_f32le", RATE, 1, 1.0, "flt", 32), ("output.mov", "mov", "copy", True)),
    (AudioInfo("pcm_f64le", RATE, 1, 1.0, "dbl", 64), ("output.mov", "mov", "copy", True)),
    (AudioInfo("vorbis", RATE, 2, 1.0, "fltp", 0), ("output.mov", "mov", "pcm_f32le", True)),
])
def test_audio_plan(info: AudioInfo, expected: tuple) -> None:
    plan = audio_plan(info)
    assert (plan.filename, plan.muxer, plan.codec, plan.exact) == expected
    assert (plan.note is None) == (plan.filename == "output.mp4")  # every switch of container is said


def test_probe_reads_the_sample_format(tmp_path: Path) -> None:
    x = tone_speech(0.5)
    s32 = write_raw(tmp_path / "s32.wav", (x * 2**31).astype("<i4"), "s32le", "-c:a", "pcm_s32le")
    f32 = write_raw(tmp_path / "f32.wav", x.astype("<f4"), "f32le", "-c:a", "pcm_f32le")
    s24 = write_raw(tmp_path / "s24.wav", (x * 2**31).astype("<i4"), "s32le", "-c:a", "pcm_s24le")
    assert (probe_audio(s32).sample_fmt, probe_audio(s32).bits) == ("s32", 32)
    assert (probe_audio(f32).sample_fmt, probe_audio(f32).bits) == ("flt", 32)
    assert (probe_audio(s24).sample_fmt, probe_audio(s24).bits) == ("s32", 24)
    assert probe_audio(s32).duration == pytest.approx(0.5) and probe_audio(s32).duration_from == "header"


def browser_webm(dest: Path, seconds: float) -> Path:
    """Opus in WebM written as a stream (as MediaRecorder does): no duration anywhere in the header."""
    wav = write_raw(dest.with_suffix(".wav"), tone_speech(seconds).astype("<f4"), "f32le", "-c:a", "pcm_f32le")
    with dest.open("wb") as out:
        subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(wav), "-c:a", "libopus", "-b:a", "48k",
                        "-f", "webm", "-live", "1", "-"], stdout=out, check=True)
    facts = probe(dest)
    assert "duration" not in facts["format"] and "duration" not in facts["streams"][0], "the header states a duration"
    return dest


def test_duration_less_webm_is_timed_from_its_samples(tmp_path: Path) -> None:
    info = probe_audio(browser_webm(tmp_path / "rec.webm", 2.212))
    assert info.duration_from == "decoded" and info.codec == "opus"
    assert info.duration == pytest.approx(2.212, abs=0.001)


def test_undecodable_duration_less_file_is_invalid_media(tmp_path: Path) -> None:
    from lipsync.errors import InvalidMedia

    src = browser_webm(tmp_path / "rec.webm", 1.0)
    broken = tmp_path / "broken.webm"
    broken.write_bytes(src.read_bytes()[:200])  # the header only: no audio data
    with pytest.raises(InvalidMedia, match="broken.webm"):
        probe_audio(broken)


# ------------------------------------------------------------------ whole renders
def render(folder: Path, video: Path, audio: Path, **spec) -> tuple[Path, dict, str]:
    job = load_jobs(job_file(folder, video=str(video), audio=str(audio), **spec))[0]
    result = run_job(job, base_dir=folder)
    metrics = json.loads(Path(result.artifacts["metrics"]).read_text())
    return Path(result.artifacts["video"]), metrics, Path(result.artifacts["log"]).read_text()


@pytest.fixture(scope="module")
def face(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return clip(tmp_path_factory.mktemp("face") / "face.mp4", seconds=2.0)


@pytest.mark.slow
@pytest.mark.parametrize("name,samples,raw_fmt,codec", [
    ("s32", lambda x: (x * (2**31 - 1)).astype("<i4") | 0x5A, "s32le", "pcm_s32le"),  # low bits set: not 24-bit
    ("f32", lambda x: x.astype("<f4"), "f32le", "pcm_f32le"),
    ("f32-over-full-scale", lambda x: (x * 1.126 / 0.9).astype("<f4"), "f32le", "pcm_f32le"),
])
def test_wav_samples_come_out_identical(face: Path, tmp_path: Path, name, samples, raw_fmt, codec) -> None:
    src = write_raw(tmp_path / f"{name}.wav", samples(tone_speech(1.5)), raw_fmt, "-c:a", codec)
    out, metrics, run_log = render(tmp_path, face, src, timing={"follow": "video"})
    assert out.name == "output.mov" and stream(out, "audio")["codec_name"] == codec
    assert decoded(out, raw_fmt) == decoded(src, raw_fmt)
    if name == "f32-over-full-scale":
        peak = np.abs(np.frombuffer(decoded(out, raw_fmt), "<f4")).max()
        assert peak == np.float32(1.126)  # never clipped to 1.0
    carried = metrics["audio"]["carried"]
    assert carried["file"] == "output.mov" and carried["exact"] is True and "MP4 cannot carry" in carried["note"]
    warned = [json.loads(line) for line in run_log.splitlines() if '"audio-carried"' in line]
    assert warned and warned[0]["level"] == "warning" and "output.mov" in warned[0]["msg"]
    assert metrics["artifacts"]["video"].endswith("output.mov")


@pytest.mark.slow
def test_24_bit_wav_stays_in_mp4_exactly(face: Path, tmp_path: Path) -> None:
    src = write_raw(tmp_path / "s24.wav", (tone_speech(1.5) * 2**31).astype("<i4"), "s32le", "-c:a", "pcm_s24le")
    out, metrics, _ = render(tmp_path, face, src, timing={"follow": "video"})
    assert out.name == "output.mp4" and stream(out, "audio")["codec_name"] == "flac"
    assert decoded(out, "s32le") == decoded(src, "s32le")
    assert metrics["audio"]["carried"] == {"file": "output.mp4", "container": "mp4", "codec": "flac",
                                           "exact": True, "note": None}


@pytest.mark.slow
def test_browser_recording_renders_at_its_length(face: Path, tmp_path: Path) -> None:
    src = browser_webm(tmp_path / "rec.webm", 2.212)
    out, metrics, _ = render(tmp_path, face, src)  # follow: audio, the default
    assert metrics["audio"]["duration_from"] == "decoded"
    assert metrics["output"]["frames"] == 55  # round(2.212 s x 25 fps)
    assert int(stream(out, "video")["nb_frames"]) == 55
    assert out.name == "output.mp4" and stream(out, "audio")["codec_name"] == "opus"
