"""Preview tiles show the mouth while it speaks: picked by speech loudness, spread over the speech."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lipsync.audio import frame_envelope, load_mono
from lipsync.preview import VOICED, pick
from lipsync.video.track import CropBox

from .media import speech

FPS = 25.0
BOX = CropBox(10, 10, 100)


def test_loudest_frame_of_each_span_of_speech() -> None:
    energy = np.zeros(40, np.float32)
    energy[[3, 5, 7]] = [0.5, 0.9, 0.4]  # a first word
    energy[[20, 22, 24]] = [0.3, 0.2, 1.0]  # a second; the rest is silence
    boxes = [BOX] * 40
    assert pick(boxes, list(range(40)), count=2, energy=energy) == [5, 24]
    assert pick(boxes, list(range(40)), count=4, energy=energy) == [5, 7, 20, 24]  # 0.2 < VOICED


def test_frames_without_a_face_are_never_picked() -> None:
    energy = np.linspace(0.1, 1.0, 20, dtype=np.float32)
    boxes: list[CropBox | None] = [BOX] * 10 + [None] * 10  # the loudest half has no face
    picked = pick(boxes, list(range(20)), count=3, energy=energy)
    assert picked and all(boxes[i] is not None for i in picked) and 9 in picked


def test_silence_or_no_energy_spreads_evenly() -> None:
    boxes = [BOX] * 40
    even = pick(boxes, list(range(40)), count=4)
    assert even == [5, 15, 25, 35]
    assert pick(boxes, list(range(40)), count=4, energy=np.zeros(40, np.float32)) == even


def test_a_short_clip_with_a_pause_shows_speech_in_every_tile(tmp_path: Path) -> None:
    """Real speech followed by 2 s of silence, a 4-tile sheet: evenly spread tiles land in the
    pause (a closed mouth); picked by loudness, every tile is voiced."""
    wav = speech(tmp_path / "s.wav", text="Hello there, this is a test.", pad_silence=2.0, rate=16000, channels=1)
    audio = load_mono(wav, 16000)
    n = int(len(audio) / 16000 * FPS)
    energy = frame_envelope(audio, 16000, FPS, n)
    boxes, order = [BOX] * n, list(range(n))
    voiced = energy >= VOICED * energy.max()
    even = pick(boxes, order)
    assert sum(not voiced[i] for i in even) >= 1  # the old choice shows pauses
    chosen = pick(boxes, order, energy=energy)
    assert len(chosen) == 4 and all(voiced[i] for i in chosen)
    last_voiced = int(np.flatnonzero(voiced)[-1])
    assert all(i <= last_voiced for i in chosen) and chosen[-1] >= 0.6 * last_voiced  # spread over the speech
