"""The render engine: every output frame from decoder to encoder, touching only the face.

Interface (what ``pipeline`` and ``clip`` use):

- ``timeline_for(path, info, n_src)`` — the source as the render reads it: planar frames in the
  source's own layout (``frames.Layout``), numbered on one fps grid, in output order with
  ping-pong (``timeline.Timeline``).
- ``converter_for(timeline, info)`` — the face window's colour conversion with the matrix and
  range the source declares (``colour.Converter``).
- ``encoder_for(dest, timeline, info, output)`` — the encoder argv, tagged with the source's
  colour description and pixel aspect ratio.
- ``Engine(...).run(timeline, order, boxes, encoder_argv)`` — the overlapped loop for frame models.

Full frames never leave ffmpeg's planar layout; pixels outside the mask reach the encoder exactly
as decoded. See the README's design notes ("Render engine").
"""

from __future__ import annotations

from pathlib import Path

from ..io.probe import VideoInfo
from ..spec import OutputSpec
from .colour import Converter
from .engine import Engine, encoder_threads, frames_in_flight
from .frames import FramePool, Layout, Picture, PlanarReader, PlanarWriter, encode_args, layout_for
from .timeline import Timeline, order


def timeline_for(path: Path, info: VideoInfo, n_src: int) -> Timeline:
    layout = layout_for(info.pix_fmt, info.bits, info.width, info.height)
    return Timeline(path, layout, info.fps, info.start_time, (info.width, info.height), n_src, info.container)


def converter_for(timeline: Timeline, info: VideoInfo) -> Converter:
    return Converter.for_source(timeline.layout, info.colour, info.height)


def encoder_for(dest: Path, timeline: Timeline, info: VideoInfo, output: OutputSpec) -> list[str]:
    return encode_args(dest, timeline.layout, timeline.fps, info.colour, codec=output.video_codec, crf=output.crf,
                       preset=output.preset, sample_aspect_ratio=info.sample_aspect_ratio, threads=encoder_threads())


__all__ = ["Converter", "Engine", "FramePool", "Layout", "Picture", "PlanarReader", "PlanarWriter", "Timeline",
           "converter_for", "encoder_for", "frames_in_flight", "layout_for", "order", "timeline_for"]
