"""End to end on generated clips: the pipeline the cluster's pods run, through the Python API."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from lipsync.errors import OutputExists
from lipsync.pipeline import run_job
from lipsync.sample import exit_right, still
from lipsync.spec import load_jobs

from lipsync.video.source import source_index
from lipsync.video.track import detect_faces

from .media import (clip, ffmpeg, frames, job_file, packet_lines, packet_md5, probe, psnr, reencode, sample_md5, speech, stream,
                    video_duration)

pytestmark = pytest.mark.slow  # renders or scores whole clips: `-m "not slow"` skips them


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("media")
    clip(d / "still.mp4", seconds=2.0)
    speech(d / "speech.wav")
    speech(d / "speech_then_silence.m4a", "-c:a", "aac", "-b:a", "128k", pad_silence=2.0)
    return d


def mouth_region(frame: np.ndarray) -> tuple[slice, slice]:
    """The lower part of the face the detector finds: where the mouth and jaw are."""
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    (face,) = detect_faces(gray, 1.0)
    return (slice(int(face.y + 0.65 * face.h), int(face.y + 1.05 * face.h)),
            slice(int(face.x + 0.2 * face.w), int(face.x + 0.8 * face.w)))


def render(folder: Path, **spec) -> tuple[Path, dict]:
    job = load_jobs(job_file(folder, **spec))[0]
    result = run_job(job, base_dir=folder)
    out = Path(result.artifacts["video"])
    return out, json.loads(Path(result.artifacts["metrics"]).read_text())


def test_default_render_keeps_audio_and_length(media, tmp_path):
    out, metrics = render(tmp_path, video=str(media / "still.mp4"), audio=str(media / "speech_then_silence.m4a"))
    audio_in = stream(media / "speech_then_silence.m4a", "audio")
    # follow: audio (the default): the output lasts as long as the speech, within one frame.
    assert abs(video_duration(out) - float(audio_in["duration"])) <= 1 / 25 + 1e-6
    # The speech is stream-copied: same packets, same codec, same rate and channels.
    assert packet_md5(out) == packet_md5(media / "speech_then_silence.m4a")
    a = stream(out, "audio")
    assert (a["codec_name"], a["sample_rate"], a["channels"]) == ("aac", "44100", 2)
    for name in ("output.mp4", "preview.jpg", "metrics.json", "run.log"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert metrics["face_track"]["frames_with_face"] == metrics["output"]["frames"]
    assert metrics["stages"]["render"]["frames"] == metrics["output"]["frames"]


def test_pixels_outside_mask_match_plain_reencode(media, tmp_path):
    out, _ = render(tmp_path, video=str(media / "still.mp4"), audio=str(media / "speech.wav"),
                    timing={"follow": "video"}, output={"uri": str(tmp_path / "out"), "preset": "ultrafast", "crf": 18})
    got = frames(out)
    ref = frames(reencode(media / "still.mp4", tmp_path / "ref.mp4", crf=18, preset="ultrafast"))
    assert got.shape == ref.shape
    # The face sits still in the middle; the mouth mask lies inside its box. Everything else is untouched.
    h, w = got.shape[1:3]
    outside = np.ones((h, w), bool)
    outside[int(0.25 * h):int(0.95 * h), int(0.3 * w):int(0.7 * w)] = False
    assert psnr(got[:, outside], ref[:, outside]) >= 40.0


def test_mouth_moves_with_speech_and_rests_in_silence(media, tmp_path):
    src = media / "speech_then_silence.m4a"  # ~3 s of speech, then 2 s of silence
    out, metrics = render(tmp_path, video=str(media / "still.mp4"), audio=str(src))
    got = frames(out)
    ref = frames(reencode(media / "still.mp4", tmp_path / "ref.mp4", preset="ultrafast"))
    mouth = mouth_region(ref[0])
    n_src = metrics["video"]["source_frames"]
    diff = np.array([
        np.abs(got[i][mouth].astype(int) - ref[source_index(i, n_src)][mouth].astype(int)).mean()
        for i in range(len(got))
    ])
    loud, silent = diff[5:60], diff[-30:]  # speech in the first 2.4 s; the last 1.2 s are silence
    # Silent frames differ from the plain encode by encoder noise only (the frame order differs).
    assert silent.max() < 3.5
    assert loud.max() > 4 * silent.max()


@pytest.mark.parametrize("fmt,args", [
    ("wav", ()),
    ("m4a", ("-c:a", "aac", "-b:a", "96k")),
    ("mp3", ("-c:a", "libmp3lame", "-b:a", "128k")),
    ("ogg", ("-c:a", "libopus", "-b:a", "64k")),
    ("flac", ("-c:a", "flac")),
])
def test_speech_formats_reach_the_output_unchanged(media, tmp_path, fmt, args):
    rate = 48000 if fmt == "ogg" else 44100  # Opus runs at 48 kHz
    src = speech(tmp_path / f"speech.{fmt}", *args, rate=rate)
    out, _ = render(tmp_path, video=str(media / "still.mp4"), audio=str(src),
                    output={"uri": str(tmp_path / "out"), "preset": "ultrafast"})
    a_in, a_out = stream(src, "audio"), stream(out, "audio")
    assert (a_out["sample_rate"], a_out["channels"]) == (a_in["sample_rate"], a_in["channels"])
    if fmt == "wav":  # MP4 cannot carry PCM: lossless FLAC, identical samples
        assert a_out["codec_name"] == "flac"
        assert sample_md5(out) == sample_md5(src)
    else:
        assert a_out["codec_name"] == a_in["codec_name"]
        assert packet_md5(out) == packet_md5(src)


def test_video_sound_track_is_dropped(media, tmp_path):
    src = clip(tmp_path / "with_tone.mp4", seconds=2.0, with_tone=True)
    out, _ = render(tmp_path, video=str(src), audio=str(media / "speech.wav"))
    audio = [s for s in probe(out)["streams"] if s["codec_type"] == "audio"]
    assert len(audio) == 1 and audio[0]["codec_name"] == "flac"


def test_longer_speech_extends_video_by_ping_pong(media, tmp_path):
    short = clip(tmp_path / "short.mp4", seconds=1.0)
    out, metrics = render(tmp_path, video=str(short), audio=str(media / "speech.wav"))
    speech_s = float(stream(media / "speech.wav", "audio")["duration"])
    assert abs(video_duration(out) - speech_s) <= 1 / 25 + 1e-6
    assert metrics["video"]["source_frames"] == 25 and metrics["output"]["frames"] > 50
    got, src = frames(out), frames(short)
    # Frame 25 of the output is source frame 23 (the first backward step), and frame 48 is 0 again.
    corner = (slice(0, 40), slice(0, 40))  # background only: the model never touches it
    assert psnr(got[25][corner], src[23][corner]) > 35
    assert psnr(got[48][corner], src[0][corner]) > 35


def test_follow_video_trims_longer_speech(media, tmp_path):
    out, _ = render(tmp_path, video=str(media / "still.mp4"), audio=str(media / "speech_then_silence.m4a"),
                    timing={"follow": "video"})
    assert abs(video_duration(out) - 2.0) <= 1 / 25 + 1e-6
    assert float(stream(out, "audio")["duration"]) <= 2.0 + 0.05


def test_follow_video_with_shorter_speech_ends_in_silence(media, tmp_path):
    long = clip(tmp_path / "long.mp4", seconds=5.0)
    short_speech = speech(tmp_path / "hi.wav", text="Hi.")
    out, _ = render(tmp_path, video=str(long), audio=str(short_speech), timing={"follow": "video"})
    assert abs(video_duration(out) - 5.0) <= 1 / 25 + 1e-6
    assert sample_md5(out) == sample_md5(short_speech)


def test_variable_frame_rate(media, tmp_path):
    cfr = clip(tmp_path / "cfr.mp4", seconds=2.0)
    vfr = tmp_path / "vfr.mp4"
    # Drop every third frame but keep the timestamps: a genuinely variable-rate stream.
    ffmpeg("-i", str(cfr), "-vf", "select='not(eq(mod(n,3),1))'", "-fps_mode", "vfr", "-c:v", "libx264", str(vfr))
    out, metrics = render(tmp_path, video=str(vfr), audio=str(media / "speech.wav"))
    assert metrics["video"]["variable_rate"] is True
    s = stream(out, "video")
    assert s["r_frame_rate"] == s["avg_frame_rate"]  # the output is constant rate
    speech_s = float(stream(media / "speech.wav", "audio")["duration"])
    assert abs(video_duration(out) - speech_s) <= 1 / metrics["video"]["fps"] + 1e-6


def test_rotated_phone_video(media, tmp_path):
    portrait = clip(tmp_path / "portrait.mp4", seconds=1.5, width=270, height=480, face_width=0.8)
    rotated = tmp_path / "rotated.mp4"
    # Store the picture on its side with rotation metadata, as phones do.
    sideways = tmp_path / "sideways.mp4"
    ffmpeg("-i", str(portrait), "-vf", "transpose=2", "-c:v", "libx264", "-crf", "16", str(sideways))
    ffmpeg("-i", str(sideways), "-c", "copy", "-metadata:s:v:0", "rotate=270", str(rotated))
    out, metrics = render(tmp_path, video=str(rotated), audio=str(media / "speech.wav"))
    assert metrics["video"]["rotation"] in (90, 270)
    s = stream(out, "video")
    assert (int(s["width"]), int(s["height"])) == (270, 480)
    assert metrics["face_track"]["frames_with_face"] > 0


def test_odd_dimensions(media, tmp_path):
    odd = tmp_path / "odd.mkv"
    ffmpeg("-i", str(media / "still.mp4"), "-vf", "format=yuv444p,crop=479:269:0:0", "-c:v", "libx264", "-pix_fmt", "yuv444p", str(odd))
    out, metrics = render(tmp_path, video=str(odd), audio=str(media / "speech.wav"))
    s = stream(out, "video")
    assert (int(s["width"]), int(s["height"])) == (480, 270)  # padded to even by one replicated row/column
    assert metrics["video"]["width"] == 479 and metrics["face_track"]["frames_with_face"] > 0


def test_face_leaving_the_frame_passes_through(media, tmp_path):
    leaving = clip(tmp_path / "leaving.mp4", seconds=2.0, motions=(exit_right(0.8, speed=2.0),))
    out, metrics = render(tmp_path, video=str(leaving), audio=str(media / "speech.wav"), timing={"follow": "video"})
    ft = metrics["face_track"]
    assert ft["frames_with_face"] > 10 and ft["frames_without_face"] > 10
    got, ref = frames(out), frames(reencode(leaving, tmp_path / "ref.mp4", preset="ultrafast"))
    # Once she has left (from 1.4 s on), the frames are just the decoded input.
    assert min(psnr(got[i], ref[i]) for i in range(38, 50)) > 40


def test_two_faces_only_the_selected_one_changes(media, tmp_path):
    two = clip(tmp_path / "two.mp4", seconds=2.0, face_width=0.3, motions=(still(0.25, 0.5), still(0.75, 0.5)))
    out, _ = render(tmp_path, video=str(two), audio=str(media / "speech.wav"), timing={"follow": "video"},
                    face={"select": "index", "index": 1})
    got, ref = frames(out), frames(reencode(two, tmp_path / "ref.mp4", preset="ultrafast"))
    h, w = got.shape[1:3]
    left = (slice(None), slice(0, w // 2))
    right_mouth = (slice(int(0.4 * h), int(0.6 * h)), slice(int(0.68 * w), int(0.8 * w)))  # the right face's mouth
    assert psnr(got[:, left[0], left[1]], ref[:, left[0], left[1]]) > 40
    assert psnr(got[:, right_mouth[0], right_mouth[1]], ref[:, right_mouth[0], right_mouth[1]]) < 35


def test_rerun_is_a_no_op_and_another_job_is_refused(media, tmp_path):
    spec = dict(video=str(media / "still.mp4"), audio=str(media / "speech.wav"))
    out, _ = render(tmp_path, **spec)
    before = out.stat().st_mtime_ns
    again = run_job(load_jobs(job_file(tmp_path, **spec))[0], base_dir=tmp_path)
    assert again.status == "unchanged" and out.stat().st_mtime_ns == before
    other = load_jobs(job_file(tmp_path, name="other", **spec))[0]
    with pytest.raises(OutputExists, match="already holds a finished render of job 't'"):
        run_job(other, base_dir=tmp_path)
    assert out.stat().st_mtime_ns == before
    forced = run_job(other, base_dir=tmp_path, force=True)
    assert forced.status == "rendered" and out.stat().st_mtime_ns != before


def test_wav2lip_renders_through_the_whole_pipeline(media, tmp_path):
    """A formula checkpoint in the published form: real weights' layout, weights by formula."""
    from .wav2lip_weights import write_formula_checkpoint

    weights = write_formula_checkpoint(tmp_path / "wav2lip.pth")
    out, metrics = render(tmp_path, video=str(media / "still.mp4"), audio=str(media / "speech_then_silence.m4a"),
                          model={"name": "wav2lip", "weights": str(weights), "options": {"batchSize": 8}},
                          timing={"follow": "video"})
    assert metrics["model"] == "wav2lip"
    assert metrics["face_track"]["frames_with_face"] == metrics["output"]["frames"] == 50
    # follow: video cut the speech at 2 s; its packets are still the original's, copied.
    src_packets = packet_lines(media / "speech_then_silence.m4a")
    out_packets = packet_lines(out)
    assert out_packets and out_packets == src_packets[:len(out_packets)]
    got = frames(out)
    ref = frames(reencode(media / "still.mp4", tmp_path / "ref.mp4", preset="ultrafast"))
    mouth = mouth_region(ref[0])
    # The generator (formula weights: not a trained face) rewrote the mouth region, nothing else.
    assert np.abs(got[:, mouth[0], mouth[1]].astype(int) - ref[:, mouth[0], mouth[1]].astype(int)).mean() > 5
    assert psnr(got[:, :40, :40], ref[:, :40, :40]) > 40


def test_wav2lip_bad_weights_fail_before_any_frame(media, tmp_path):
    from lipsync.errors import InvalidWeights

    bad = tmp_path / "wav2lip.pth"
    bad.write_bytes(b"not a checkpoint")
    job = load_jobs(job_file(tmp_path, video=str(media / "still.mp4"), audio=str(media / "speech.wav"),
                             model={"name": "wav2lip", "weights": str(bad)}))[0]
    with pytest.raises(InvalidWeights) as e:
        run_job(job, base_dir=tmp_path)
    assert str(bad) in e.value.message or "wav2lip.pth" in e.value.message
    assert not (tmp_path / "out").exists()


def test_artifacts_are_ordinary_readable_files(media, tmp_path):
    out, _ = render(tmp_path, video=str(media / "still.mp4"), audio=str(media / "speech.wav"))
    for f in out.parent.iterdir():
        assert f.stat().st_mode & 0o044 == 0o044, f  # group/other can read, as any file the user writes
    assert not [f for f in out.parent.iterdir() if f.name.startswith(".")]  # no temporary names left


def test_an_interrupted_replacement_is_not_mistaken_for_a_finished_render(media, tmp_path):
    from lipsync.errors import LipSyncError

    spec = dict(video=str(media / "still.mp4"), audio=str(media / "speech.wav"))
    out, _ = render(tmp_path, **spec)
    (out.parent / "preview.jpg").unlink()
    (out.parent / "preview.jpg").mkdir()  # publishing the replacement's preview will fail
    other = load_jobs(job_file(tmp_path, name="other", **spec))[0]
    with pytest.raises(LipSyncError) as failed:
        run_job(other, base_dir=tmp_path, force=True)
    assert failed.value.stage == "publish" and failed.value.reason == "InternalError"
    # output.mp4 is already the replacement's; the first job must not take it for its own render.
    with pytest.raises(OutputExists, match="unfinished replacement by job 'other'"):
        run_job(load_jobs(job_file(tmp_path, **spec))[0], base_dir=tmp_path)
    # The replacement itself, run again once the fault is gone, finishes what it started.
    (out.parent / "preview.jpg").rmdir()
    assert run_job(other, base_dir=tmp_path).status == "rendered"
    assert json.loads((out.parent / "metrics.json").read_text())["identity"]["job"] == "other"
