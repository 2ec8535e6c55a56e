"""Streaming: the runner's memory does not grow with the clip's length.

Asserted loosely (a 4x longer clip stays within 20 % peak RSS); the figures themselves live in
benchmarks/bench_runner.py.
"""

from __future__ import annotations

import pytest

from .media import peak_rss, speech

pytestmark = pytest.mark.slow  # renders or scores whole clips: `-m "not slow"` skips them


def test_peak_memory_flat_in_clip_length(tmp_path):
    audio = speech(tmp_path / "speech.wav")
    short, long = peak_rss(tmp_path / "short", 2.0, audio), peak_rss(tmp_path / "long", 8.0, audio)
    assert long <= 1.2 * short, (short, long)
