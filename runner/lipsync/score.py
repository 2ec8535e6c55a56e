"""Lip-sync scores of a finished video, measured with Wav2Lip's SyncNet expert (``lipsync_expert.pth``).

The scores follow the LSE metrics of the Wav2Lip paper (computed there with syncnet_python): every
window of 5 frames is embedded, so is the audio aligned to each window, and the mean distance
between the two is taken for each audio offset from -max_offset to +max_offset frames. LSE-D is
the smallest of those means (lower: lips closer to the speech); LSE-C is the median minus that
minimum (higher: the right alignment stands out from the wrong ones). Two differences, stated so
that nobody compares numbers that are not comparable: the network is the Wav2Lip expert, whose
unit-length embeddings put distances in [0, 2] (syncnet_python's are unnormalised, ~5-10), and a
shifted window is compared only with audio windows that exist (syncnet_python pads with zeros).

The video is streamed twice: a face track on small frames, then 96 px crops frame by frame, of
which only the 5-frame sliding window and one batch are held. Speech is decoded whole (64 kB/s).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .audio import load_mono
from .errors import InputNotFound, NoFaceFound
from .io.probe import VideoInfo, probe_audio, probe_video
from .mel import MAX_ABS_VALUE, MEL_STEPS_PER_SECOND, SAMPLE_RATE, WINDOW_STEPS, mel_spectrogram, window_starts
from .models.syncnet import SyncNetColor, load_syncnet
from .spec import DEFAULT_PADDING, FaceSpec
from .video import track
from .video.crop import cut
from .video.decode import FrameReader, decode_command

MODEL = "syncnet_color"
WINDOW_FRAMES = 5  # frames per SyncNet window, as trained
CROP_SIZE = 96  # the expert's face crop side; it sees the lower half
BATCH = 64  # windows per forward pass: ~18 MB of face input


@dataclass(frozen=True)
class OffsetScores:
    lse_d: float
    lse_c: float
    best_offset: int


class OffsetSearch:
    """Mean embedding distance per audio offset, accumulated batch by batch.

    Offset k pairs the video window at frame i with the audio window at frame i - k, so a positive
    best offset means the audio LEADS the video by k frames (the sound comes before the lips move),
    a negative one that it lags; the sign is syncnet_python's. Only sums and counts per offset are
    kept, so memory does not grow with the clip.
    """

    def __init__(self, max_offset: int) -> None:
        self.offsets = np.arange(-max_offset, max_offset + 1)
        self._sums = np.zeros(len(self.offsets))
        self._counts = np.zeros(len(self.offsets), np.int64)

    def add(self, indices: np.ndarray, video: np.ndarray, audio: np.ndarray, audio_first: int) -> None:
        """Video embeddings of windows ``indices`` against ``audio`` (windows from ``audio_first`` on),
        which must hold every existing audio window within max_offset of those indices."""
        for k, offset in enumerate(self.offsets):
            j = indices - offset - audio_first
            valid = (j >= 0) & (j < len(audio))
            if valid.any():
                self._sums[k] += float(np.linalg.norm(video[valid] - audio[j[valid]], axis=1).sum())
                self._counts[k] += int(valid.sum())

    def result(self) -> OffsetScores:
        """LSE-D, LSE-C and the best offset over the offsets that had any pair."""
        seen = self._counts > 0
        means = self._sums[seen] / self._counts[seen]
        best = int(np.argmin(means))
        return OffsetScores(float(means[best]), float(np.median(means) - means[best]), int(self.offsets[seen][best]))


def search_offsets(video: np.ndarray, audio: np.ndarray, max_offset: int = 15) -> OffsetScores:
    """The offset search on whole arrays of per-window embeddings (window i of each at row i)."""
    search = OffsetSearch(max_offset)
    search.add(np.arange(len(video)), video, audio, 0)
    return search.result()


class AudioEmbeddings:
    """Audio embeddings by window index, computed on demand in batches; windows behind the video's
    progress are dropped, so only about one batch plus the offset range is held."""

    def __init__(self, net: SyncNetColor, mel: np.ndarray, fps: float, n_windows: int, device: str) -> None:
        # Audio shorter than the video: the missing windows hear silence (the mel floor).
        need = int(MEL_STEPS_PER_SECOND * (n_windows - 1) / fps) + WINDOW_STEPS
        short = max(0, need - mel.shape[1])
        self._mel = np.pad(mel, ((0, 0), (0, short)), constant_values=-MAX_ABS_VALUE)
        self._starts = window_starts(fps, n_windows, self._mel.shape[1])
        self._net, self._device = net, device
        self._first = 0
        self._held = np.zeros((0, 512), np.float32)

    def span(self, lo: int, hi: int) -> tuple[np.ndarray, int]:
        """Embeddings of the existing windows in [lo, hi) and the index of the first one."""
        lo, hi = max(0, lo), min(len(self._starts), hi)
        if lo > self._first:
            self._held = self._held[lo - self._first:]
            self._first = lo
        for start in range(self._first + len(self._held), hi, BATCH):
            self._held = np.concatenate([self._held, self._embed(start, min(hi, start + BATCH))])
        return self._held[: hi - self._first], self._first

    def _embed(self, start: int, stop: int) -> np.ndarray:
        cols = self._starts[start:stop, None] + np.arange(WINDOW_STEPS)[None, :]
        windows = self._mel[:, cols].transpose(1, 0, 2)[:, None]  # (B, 1, 80, 16)
        with torch.inference_mode():
            return self._net.embed_audio(torch.from_numpy(np.ascontiguousarray(windows)).to(self._device)).cpu().numpy()


def face_track(video: Path, info: VideoInfo) -> list[track.CropBox | None]:
    """One crop box per frame, found as a default wav2lip render finds them (haar, wav2lip's padding):
    the score judges the very region a render replaced."""
    (w, h), scale = track.analysis_size(info.width, info.height)
    face = FaceSpec()
    with FrameReader(decode_command(video, fps=info.fps, size=(w, h)), w, h, field="video") as reader:
        sc = track.scan(reader, scale, face)
    boxes = track.build_track(sc, fps=float(info.fps), padding=DEFAULT_PADDING["wav2lip"], every=face.detect_every)
    if not any(b is not None for b in boxes):
        raise NoFaceFound(f"no face was found in any of the {sc.frames} frames of {str(video)!r}", stage="score")
    return boxes


def face_windows(video: Path, info: VideoInfo, boxes: list[track.CropBox | None]
                 ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(window indices, (B, 15, 48, 96) float32 inputs) in batches; a window needs a face in all 5 frames.

    Channels are the 5 frames' BGR in time order, values in [0, 1]: the layout the expert was trained on.
    """
    recent: deque[np.ndarray | None] = deque(maxlen=WINDOW_FRAMES)
    indices: list[int] = []
    batch: list[np.ndarray] = []
    with FrameReader(decode_command(video, fps=info.fps), info.width, info.height, field="video") as reader:
        for i, frame in enumerate(reader):
            box = boxes[i] if i < len(boxes) else None
            recent.append(cut(frame, box, CROP_SIZE)[CROP_SIZE // 2:] if box is not None else None)
            if len(recent) == WINDOW_FRAMES and all(c is not None for c in recent):
                indices.append(i - WINDOW_FRAMES + 1)
                batch.append(np.concatenate(list(recent), axis=2).transpose(2, 0, 1))
            if len(batch) == BATCH:
                yield np.array(indices), np.stack(batch).astype(np.float32) / 255.0
                indices, batch = [], []
    if batch:
        yield np.array(indices), np.stack(batch).astype(np.float32) / 255.0


def score_video(video: Path, weights: Path, *, audio: Path | None = None, device: str = "cpu",
                max_offset: int = 15) -> dict:
    """LSE-D / LSE-C of ``video`` against its own audio stream, or against ``audio`` when given.

    ``best_offset`` is in frames; positive: the audio leads the video, negative: it lags
    (see ``OffsetSearch``). ``windows`` counts the 5-frame windows with a face in every frame.
    """
    speech = audio or video
    # A missing input, the weights included, is InputNotFound (exit 11), as in `lipsync run`.
    for path, field in ((video, "video"), (speech, "audio"), (weights, "--weights")):
        if not path.exists():
            raise InputNotFound(f"{field} {str(path)!r} does not exist: check the path", stage="score")
    net = load_syncnet(weights, device)
    info = probe_video(video, field="video")
    probe_audio(speech, field="audio")
    boxes = face_track(video, info)
    n_windows = max(0, len(boxes) - WINDOW_FRAMES + 1)
    mel = mel_spectrogram(load_mono(speech, SAMPLE_RATE, field="audio"))
    audio_embeddings = AudioEmbeddings(net, mel, float(info.fps), n_windows, device)
    search = OffsetSearch(max_offset)
    windows = 0
    for indices, faces in face_windows(video, info, boxes):
        with torch.inference_mode():
            embedded = net.embed_faces(torch.from_numpy(faces).to(device)).cpu().numpy()
        held, first = audio_embeddings.span(int(indices[0]) - max_offset, int(indices[-1]) + max_offset + 1)
        search.add(indices, embedded, held, first)
        windows += len(indices)
    if windows == 0:
        raise NoFaceFound(f"{str(video)!r} has no {WINDOW_FRAMES} consecutive frames with a face", stage="score")
    scores = search.result()
    return {"frames": len(boxes), "windows": windows, "lse_d": round(scores.lse_d, 6),
            "lse_c": round(scores.lse_c, 6), "best_offset": scores.best_offset, "model": MODEL}
