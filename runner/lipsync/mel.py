"""Wav2Lip's audio features: the 80-band log-mel spectrogram and its per-frame windows.

The published Wav2Lip checkpoints were trained on one exact feature recipe (its ``hparams``:
16 kHz, pre-emphasis 0.97, n_fft 800, hop 200, 80 Slaney mel bands 55-7600 Hz, dB with a -20 dB
reference, symmetric normalisation to [-4, 4]). Any deviation shifts the inputs away from what the
network saw in training, so it is reproduced here in NumPy without librosa (one heavy
dependency fewer in the runner image) and checked against ``mel_reference.npy`` (agrees to 3e-7).
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 800
HOP = 200
N_MELS = 80
FMIN = 55.0
FMAX = 7600.0
PREEMPHASIS = 0.97
REF_LEVEL_DB = 20.0
MIN_LEVEL_DB = -100.0
MAX_ABS_VALUE = 4.0
MEL_STEPS_PER_SECOND = SAMPLE_RATE / HOP  # 80 mel columns per second of audio
WINDOW_STEPS = 16  # mel columns per video frame window (0.2 s), as trained

# Slaney's mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above.
_F_SP = 200.0 / 3.0
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _F_SP
    log = _MIN_LOG_MEL + np.log(np.maximum(hz, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(hz >= _MIN_LOG_HZ, log, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * _F_SP
    log = _MIN_LOG_HZ * np.exp(_LOGSTEP * (np.maximum(mel, _MIN_LOG_MEL) - _MIN_LOG_MEL))
    return np.where(mel >= _MIN_LOG_MEL, log, linear)


def mel_filter_bank(
    sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS, fmin: float = FMIN, fmax: float = FMAX
) -> np.ndarray:
    """(n_mels, n_fft//2 + 1) triangular filters on the Slaney scale, Slaney area-normalised."""
    fft_freqs = np.fft.rfftfreq(n_fft, d=1.0 / sr)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    # Equal area per band, so wide high-frequency bands do not dominate.
    return weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]


_MEL_BASIS = mel_filter_bank()
_CHUNK_FRAMES = 2048  # STFT frames per step: bounds working memory (~20 MB) for hour-long audio


def _mel_magnitude(y: np.ndarray) -> np.ndarray:
    """Mel-filtered |STFT| (80, frames): centred frames, reflect padding, periodic Hann."""
    pad = N_FFT // 2
    if not len(y):  # reflect padding needs a sample; one of silence gives one silent column
        y = np.zeros(1)
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(y, pad, mode="reflect"), N_FFT)[::HOP]
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)
    mel = np.empty((N_MELS, len(frames)))
    for i in range(0, len(frames), _CHUNK_FRAMES):
        spectrum = np.abs(np.fft.rfft(frames[i : i + _CHUNK_FRAMES] * window, axis=1))
        mel[:, i : i + _CHUNK_FRAMES] = _MEL_BASIS @ spectrum.T
    return mel


def mel_spectrogram(wav_16k: np.ndarray) -> np.ndarray:
    """Wav2Lip's normalised log-mel spectrogram (80, 1 + len // 200) float32 of mono 16 kHz audio."""
    y = np.asarray(wav_16k, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"expected mono audio, a 1-D array, got shape {y.shape}")
    y = np.concatenate([y[:1], y[1:] - PREEMPHASIS * y[:-1]])
    min_level = 10.0 ** (MIN_LEVEL_DB / 20.0)
    s_db = 20.0 * np.log10(np.maximum(min_level, _mel_magnitude(y))) - REF_LEVEL_DB
    scaled = 2.0 * MAX_ABS_VALUE * (s_db - MIN_LEVEL_DB) / -MIN_LEVEL_DB - MAX_ABS_VALUE
    return np.clip(scaled, -MAX_ABS_VALUE, MAX_ABS_VALUE).astype(np.float32)


def window_starts(fps: float, n_frames: int, n_mel_steps: int) -> np.ndarray:
    """First mel column of each frame's window: ``int(80 * frame / fps)``, clamped to the last full one.

    Matches Wav2Lip's inference (``int(i * 80 / fps)``, and the final window for any frame whose
    window would run past the end), so any video frame rate lines up with the 80 Hz mel.
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    frames = np.arange(n_frames, dtype=np.float64)
    starts = (frames * (MEL_STEPS_PER_SECOND / fps)).astype(np.int64)
    return np.minimum(starts, max(n_mel_steps - WINDOW_STEPS, 0))


def pad_to_window(mel: np.ndarray) -> np.ndarray:
    """``mel`` with at least one full window: audio under 0.2 s is padded with silence (-4, the floor)."""
    short = WINDOW_STEPS - mel.shape[1]
    if short <= 0:
        return mel
    return np.concatenate([mel, np.full((mel.shape[0], short), -MAX_ABS_VALUE, mel.dtype)], axis=1)


def mel_windows(mel: np.ndarray, fps: float, n_frames: int) -> np.ndarray:
    """(n_frames, 80, 16) float32: the mel window each output frame is rendered from."""
    mel = pad_to_window(mel)
    starts = window_starts(fps, n_frames, mel.shape[1])
    cols = starts[:, None] + np.arange(WINDOW_STEPS)[None, :]
    return np.ascontiguousarray(mel[:, cols].transpose(1, 0, 2), dtype=np.float32)
