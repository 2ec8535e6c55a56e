"""Wav2Lip conformance: layout, mel features, forward pass, loader errors, frame alignment, FrameModel."""

from __future__ import annotations

import io
import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from lipsync.errors import DeviceUnavailable, InvalidWeights
from lipsync.mel import mel_spectrogram, mel_windows, window_starts
from lipsync.models.base import FrameModel
from lipsync.models.syncnet import SyncNetColor, load_syncnet
from lipsync.models.wav2lip import Wav2Lip, Wav2LipModel, load_wav2lip, resolve_autocast, resolve_device
from lipsync.spec import ModelSpec
from .wav2lip_weights import REFERENCE_DIR, formula_state_dict, manifest_layout, write_formula_checkpoint

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def reference_mel() -> np.ndarray:
    return np.load(REFERENCE_DIR / "mel_reference.npy")


@pytest.fixture(scope="module")
def published_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_formula_checkpoint(tmp_path_factory.mktemp("weights") / "wav2lip.pth")


@pytest.fixture(scope="module")
def net(published_checkpoint: Path) -> Wav2Lip:
    return load_wav2lip(published_checkpoint, CPU)


@pytest.fixture(scope="module")
def formula_state() -> "OrderedDict[str, torch.Tensor]":
    return formula_state_dict()


def _reference_forward(model: Wav2Lip, reference_mel: np.ndarray) -> np.ndarray:
    """The README's stated inputs: mel columns 40..55 and the (6, 96, 96) face as a batch of one."""
    audio = torch.from_numpy(reference_mel[:, 40:56].copy()).reshape(1, 1, 80, 16)
    face = torch.from_numpy(np.load(REFERENCE_DIR / "wav2lip_face_input.npy")).reshape(1, 6, 96, 96)
    with torch.inference_mode():
        return model(audio, face).numpy()


# ---------------------------------------------------------------------------- layout and features
def test_state_dict_keys_and_shapes_equal_the_manifest_in_order() -> None:
    state = Wav2Lip().state_dict()
    assert [(k, list(v.shape)) for k, v in state.items()] == manifest_layout("wav2lip")
    assert sum(p.numel() for p in Wav2Lip().parameters()) == 36298035


def test_mel_matches_reference(reference_mel: np.ndarray) -> None:
    mel = mel_spectrogram(np.load(REFERENCE_DIR / "audio_16k.npy"))
    assert mel.dtype == np.float32 and mel.shape == reference_mel.shape == (80, 81)
    np.testing.assert_allclose(mel, reference_mel, atol=1e-3, rtol=0)


def test_mel_of_silence_and_of_very_short_audio() -> None:
    assert mel_spectrogram(np.zeros(0, np.float32)).shape == (80, 1)
    silence = mel_spectrogram(np.zeros(4000, np.float32))
    assert silence.shape == (80, 21) and np.all(silence == -4.0)
    with pytest.raises(ValueError, match="mono"):
        mel_spectrogram(np.zeros((2, 4000), np.float32))
    windows = mel_windows(silence[:, :5], 25.0, 3)  # under one window: padded with silence
    assert windows.shape == (3, 80, 16) and np.all(windows == -4.0)


# ---------------------------------------------------------------------------- frame alignment
def _wav2lip_chunks(mel: np.ndarray, fps: float) -> list[np.ndarray]:
    """Wav2Lip's own inference loop, restated: windows until one would run past the end, then the last."""
    chunks, i, step = [], 0, 80.0 / fps
    while True:
        start = int(i * step)
        if start + 16 > mel.shape[1]:
            chunks.append(mel[:, -16:])
            return chunks
        chunks.append(mel[:, start : start + 16])
        i += 1


@pytest.mark.parametrize("fps", [25.0, 29.97, 30.0])
def test_windows_follow_wav2lip_alignment(reference_mel: np.ndarray, fps: float) -> None:
    expected = _wav2lip_chunks(reference_mel, fps)
    n_frames = len(expected) + 5  # frames past the audio's end keep the last full window
    windows = mel_windows(reference_mel, fps, n_frames)
    assert windows.shape == (n_frames, 80, 16) and windows.dtype == np.float32
    for i, chunk in enumerate(expected):
        np.testing.assert_array_equal(windows[i], chunk)
    for window in windows[len(expected) :]:
        np.testing.assert_array_equal(window, reference_mel[:, -16:])


def test_window_starts_at_common_frame_rates() -> None:
    assert window_starts(25.0, 5, 1000).tolist() == [0, 3, 6, 9, 12]
    assert window_starts(30.0, 5, 1000).tolist() == [0, 2, 5, 8, 10]
    assert window_starts(29.97, 1000, 10**6)[999] == int(999 * 80 / 29.97) == 2666
    assert window_starts(25.0, 100, 40).max() == 24  # clamped: the last full window of 40 columns


# ---------------------------------------------------------------------------- loading
def test_published_checkpoint_reproduces_reference_forward(net: Wav2Lip, reference_mel: np.ndarray) -> None:
    assert not net.training
    out = _reference_forward(net, reference_mel)
    assert out.shape == (1, 3, 96, 96)
    np.testing.assert_allclose(out, np.load(REFERENCE_DIR / "wav2lip_out_reference.npy"), atol=1e-4, rtol=0)


def test_the_weights_are_held_once(published_checkpoint: Path, formula_state) -> None:
    """The network is built on the meta device (no memory, no random initialisation) and takes the
    checkpoint's tensors as its own: nothing is left on meta, every value is the checkpoint's."""
    from lipsync.models.checkpoint import load_checked

    built: list[torch.device] = []

    def build() -> Wav2Lip:
        net = Wav2Lip()
        built.append(next(net.parameters()).device)
        return net

    net = load_checked(build, published_checkpoint, "Wav2Lip generator")
    assert built == [torch.device("meta")]
    loaded = net.state_dict()
    assert all(t.device.type == "cpu" for t in loaded.values())
    assert loaded.keys() == formula_state.keys()
    assert all(torch.equal(loaded[k], formula_state[k]) for k in loaded)
    # ... mapped from the file: chunk workers loading the same file share its pages
    assert str(published_checkpoint) in Path("/proc/self/maps").read_text()


def test_a_half_precision_checkpoint_loads_as_the_models_own_precision(tmp_path: Path, formula_state) -> None:
    half = tmp_path / "half.pth"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in formula_state.items()}, half)
    net = load_wav2lip(half)
    loaded = net.state_dict()
    assert all(v.dtype == formula_state[k].dtype for k, v in loaded.items())
    k = next(k for k, v in formula_state.items() if v.is_floating_point())
    assert torch.equal(loaded[k], formula_state[k].half().float())


def test_bare_state_dict_and_file_objects_load(tmp_path: Path, reference_mel: np.ndarray) -> None:
    bare = write_formula_checkpoint(tmp_path / "bare.pth", published_form=False)
    assert not any(k.startswith("module.") for k in torch.load(bare, weights_only=True))
    with open(bare, "rb") as f:
        model = load_wav2lip(f, "cpu")
    np.testing.assert_allclose(
        _reference_forward(model, reference_mel), np.load(REFERENCE_DIR / "wav2lip_out_reference.npy"), atol=1e-4
    )


@pytest.mark.slow
def test_legacy_serialization_loads(
    tmp_path: Path, formula_state: "OrderedDict[str, torch.Tensor]", reference_mel: np.ndarray
) -> None:
    """The published files date from torch 1.1, before the zip format: they must load too."""
    published = {"state_dict": OrderedDict((f"module.{k}", v) for k, v in formula_state.items()), "global_step": 1}
    path = tmp_path / "legacy.pth"
    torch.save(published, path, _use_new_zipfile_serialization=False)
    np.testing.assert_allclose(
        _reference_forward(load_wav2lip(path), reference_mel),
        np.load(REFERENCE_DIR / "wav2lip_out_reference.npy"),
        atol=1e-4,
    )


def _save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def _refusal(source: Path | io.BytesIO) -> str:
    with pytest.raises(InvalidWeights) as e:
        load_wav2lip(source)
    assert e.value.exit_code == 16 and not e.value.transient
    return e.value.message


def test_missing_truncated_and_random_files_are_refused(tmp_path: Path, published_checkpoint: Path) -> None:
    assert "no such file" in _refusal(tmp_path / "nope.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(published_checkpoint.read_bytes()[: 10_000_000])
    assert "not a readable PyTorch checkpoint" in _refusal(truncated)
    noise = tmp_path / "noise.pth"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    refusal = _refusal(noise)
    assert "are not a PyTorch checkpoint" in refusal and "unknown data" in refusal
    assert "weights_only" not in refusal  # never torch's advice to unpickle the file's code
    assert "is a folder, not a checkpoint file" in _refusal(tmp_path)
    page = tmp_path / "login.pth"
    page.write_text("<!DOCTYPE html><html><body>Sign in</body></html>")
    assert "an HTML or XML page" in _refusal(page)


def _leave_mark(path: str) -> None:
    Path(path).write_text("unpickling ran code")


class _Payload:
    """Unpickling this calls a function: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return _leave_mark, (str(self.marker),)


def test_pickles_that_run_code_are_refused_unexecuted(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = _save({"state_dict": _Payload(marker)}, tmp_path / "code.pth")
    refusal = _refusal(path)
    assert "cannot be loaded safely" in refusal and "weights_only" not in refusal
    assert not marker.exists()


def test_non_state_dicts_are_refused(tmp_path: Path) -> None:
    assert "hold a list" in _refusal(_save([torch.zeros(3)], tmp_path / "list.pth"))
    assert "not a state dict of tensors" in _refusal(_save({"state_dict": {"a": 1}}, tmp_path / "ints.pth"))


def test_another_models_checkpoint_is_refused_with_counts(tmp_path: Path) -> None:
    syncnet = {k: torch.zeros(s) for k, s in manifest_layout("syncnet_color")}
    message = _refusal(_save({"state_dict": syncnet}, tmp_path / "lipsync_expert.pth"))
    assert "SyncNet lip-sync expert" in message
    # SyncNet's audio encoder shares names with the generator's: 91 of its keys fit by name.
    assert "261 missing keys: face_encoder_blocks.0.0.conv_block.0.weight" in message
    assert "126 unexpected keys: face_encoder.0.conv_block.0.weight" in message
    assert (
        "7 mis-shaped keys: audio_encoder.11.conv_block.0.weight (expected [512, 256, 3, 3], got [256, 256, 3, 3])"
    ) in message
    assert "... 258 more" in message


def test_missing_unexpected_and_misshaped_keys_are_listed(
    tmp_path: Path, formula_state: "OrderedDict[str, torch.Tensor]"
) -> None:
    state = OrderedDict(formula_state)
    del state["output_block.1.bias"]
    state["extra.weight"] = torch.zeros(2)
    state["audio_encoder.0.conv_block.0.weight"] = torch.zeros(32, 2, 3, 3)
    message = _refusal(_save({"state_dict": state}, tmp_path / "edited.pth"))
    assert "1 missing keys: output_block.1.bias" in message
    assert "1 unexpected keys: extra.weight" in message
    assert (
        "1 mis-shaped keys: audio_encoder.0.conv_block.0.weight (expected [32, 1, 3, 3], got [32, 2, 3, 3])"
    ) in message


def test_non_finite_weights_are_refused(tmp_path: Path, formula_state: "OrderedDict[str, torch.Tensor]") -> None:
    state = OrderedDict(formula_state)
    state["output_block.1.bias"] = torch.tensor([0.0, float("nan"), 0.0])
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    assert "NaN or infinite values in 1 tensors: output_block.1.bias" in _refusal(buffer)


# ---------------------------------------------------------------------------- devices
def test_device_choice(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailable):
        resolve_device("cuda")
    with caplog.at_level(logging.WARNING):
        assert resolve_device("auto") == CPU
    assert "runs on the CPU" in caplog.text
    assert resolve_device("cpu") == CPU
    assert resolve_autocast("auto", CPU) is None and resolve_autocast("fp16", CPU) is None
    assert resolve_autocast("auto", torch.device("cuda")) is torch.float16
    assert resolve_autocast("fp32", torch.device("cuda")) is None


def _spec(**options: object) -> ModelSpec:
    return ModelSpec(name="wav2lip", weights="w.pth", options=options)


@pytest.mark.slow
def test_from_spec_loads_weights_up_front(
    tmp_path: Path, published_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a GPU CI runner
    spec = _spec(device="cpu", batchSize=5)
    model = Wav2LipModel.from_spec(spec, published_checkpoint)
    assert isinstance(model, FrameModel)
    assert (model.name, model.crop_size, model.audio_rate, model.batch_size) == ("wav2lip", 96, 16000, 5)
    assert model.device == CPU and model.autocast is None and not model.net.training
    assert Wav2LipModel.from_spec(_spec(), published_checkpoint).batch_size == 16
    with pytest.raises(InvalidWeights):
        Wav2LipModel.from_spec(spec, tmp_path / "absent.pth")
    with pytest.raises(DeviceUnavailable):
        Wav2LipModel.from_spec(_spec(device="cuda"), published_checkpoint)


# ---------------------------------------------------------------------------- the FrameModel
@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (4, 96, 96, 3), dtype=np.uint8)


def _prepared(net: Wav2Lip, batch_size: int) -> Wav2LipModel:
    model = Wav2LipModel(net, device=CPU, batch_size=batch_size)
    model.prepare(np.load(REFERENCE_DIR / "audio_16k.npy"), fps=20.0, n_frames=20)  # frame f -> column 4f
    return model


def test_infer_feeds_the_network_as_trained(net: Wav2Lip, crops: np.ndarray, reference_mel: np.ndarray) -> None:
    out = _prepared(net, 4).infer(crops[:1], np.array([10]))
    assert out.shape == (1, 96, 96, 3) and out.dtype == np.uint8
    target = torch.from_numpy(crops[:1]).permute(0, 3, 1, 2).float() / 255.0
    masked = target.clone()
    masked[:, :, 48:] = 0.0
    audio = torch.from_numpy(reference_mel[:, 40:56].copy()).reshape(1, 1, 80, 16)
    with torch.inference_mode():
        expected = net(audio, torch.cat((masked, target), 1))
    expected_pixels = (expected * 255.0).round().permute(0, 2, 3, 1).numpy().astype(np.uint8)
    assert np.abs(out.astype(int) - expected_pixels.astype(int)).max() <= 1


@pytest.mark.slow
def test_batch_splitting_gives_the_same_result(net: Wav2Lip, crops: np.ndarray) -> None:
    frames = np.array([0, 7, 19, 3])
    whole = _prepared(net, 4).infer(crops, frames)
    split = _prepared(net, 3).infer(crops, frames)
    assert whole.shape == crops.shape and whole.dtype == np.uint8
    # oneDNN picks kernels by batch size, so sums may differ in the last float bit and, rarely,
    # a value on a rounding boundary lands one level apart; anything more would be a real bug.
    difference = np.abs(whole.astype(int) - split.astype(int))
    assert difference.max() <= 1 and np.count_nonzero(difference) <= 10


def test_infer_checks_its_inputs(net: Wav2Lip, crops: np.ndarray) -> None:
    with pytest.raises(RuntimeError, match="before prepare"):
        Wav2LipModel(net, device=CPU).infer(crops, np.arange(4))
    model = _prepared(net, 4)
    with pytest.raises(ValueError, match="uint8"):
        model.infer(crops.astype(np.float32), np.arange(4))
    with pytest.raises(ValueError, match="indices in"):
        model.infer(crops, np.array([0, 1, 2, 20]))
    assert model.infer(crops[:0], np.arange(0)).shape == (0, 96, 96, 3)


def test_infer_takes_array_views(net: Wav2Lip, crops: np.ndarray) -> None:
    model = _prepared(net, 4)
    flipped = crops[:2, :, :, ::-1]  # a negative-stride view, as an RGB<->BGR flip gives
    flipped.flags.writeable = False
    np.testing.assert_array_equal(model.infer(flipped, np.arange(2)), model.infer(flipped.copy(), np.arange(2)))


# ---------------------------------------------------------------------------- the SyncNet expert
def test_syncnet_layout_equals_the_manifest() -> None:
    model = SyncNetColor()
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == manifest_layout("syncnet_color")
    assert sum(p.numel() for p in model.parameters()) == 16435072


def test_syncnet_loads_and_embeds(tmp_path: Path, published_checkpoint: Path) -> None:
    expert = load_syncnet(write_formula_checkpoint(tmp_path / "lipsync_expert.pth", model="syncnet_color"))
    assert not expert.training
    with torch.inference_mode():
        audio, faces = expert(torch.randn(2, 1, 80, 16), torch.rand(2, 15, 48, 96))
    assert audio.shape == faces.shape == (2, 512)
    np.testing.assert_allclose(audio.norm(dim=1).numpy(), 1.0, atol=1e-5)
    np.testing.assert_allclose(faces.norm(dim=1).numpy(), 1.0, atol=1e-5)
    with pytest.raises(InvalidWeights, match=r"looks like the Wav2Lip generator \(wav2lip.pth"):
        load_syncnet(published_checkpoint)
