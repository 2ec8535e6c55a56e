"""The face window's colour conversions: planar YUV ↔ the BGR crops models take, and back.

Only the window around the face is ever converted. The matrix and range are the ones the source
declares (``Colour``); where it declares none, the convention players follow: BT.709 for HD
(720 lines or more), BT.601 below. The blend writes only where the feathered mask is above
zero, in luma and (mask averaged over each chroma sample's pixels) in chroma, so every sample
outside the mask keeps exactly its decoded value.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..io.probe import Colour
from ..video.track import CropBox
from .frames import Layout, Picture

# Kr, Kb of each YUV matrix ffmpeg names (color_space)
_COEFFICIENTS = {
    "bt709": (0.2126, 0.0722),
    "smpte170m": (0.299, 0.114), "bt470bg": (0.299, 0.114), "bt601": (0.299, 0.114),
    "fcc": (0.30, 0.11),
    "smpte240m": (0.212, 0.087),
    "bt2020nc": (0.2627, 0.0593), "bt2020c": (0.2627, 0.0593),
}


def matrix_name(colour: Colour, height: int) -> str:
    """The matrix to convert with: the declared one, else bt709 for HD, smpte170m (BT.601) below."""
    if colour.matrix in _COEFFICIENTS:
        return colour.matrix
    return "bt709" if height >= 720 else "smpte170m"


@dataclass(frozen=True)
class Converter:
    """YUV code values (at ``layout.bits``, limited or full range) ↔ 8-bit BGR, as 3x4 affine
    matrices for ``cv2.transform`` (channels in Y, U, V / B, G, R order)."""

    to_bgr: np.ndarray  # (3, 4) float32
    to_yuv: np.ndarray  # (3, 4) float32
    layout: Layout

    @classmethod
    def for_source(cls, layout: Layout, colour: Colour, height: int) -> "Converter":
        kr, kb = _COEFFICIENTS[matrix_name(colour, height)]
        kg = 1 - kr - kb
        scale = float(1 << (layout.bits - 8))
        if colour.range == "pc":
            top = float(layout.max_value)
            y_off, y_span, c_span = 0.0, top, top
        else:
            y_off, y_span, c_span = 16 * scale, 219 * scale, 224 * scale
        c_off = float(1 << (layout.bits - 1))
        # normalised Y' in [0, 1], Cb', Cr' in [-0.5, 0.5]  →  R, G, B in [0, 1]
        rgb_from_ycc = np.array([
            [1.0, 0.0, 2 * (1 - kr)],
            [1.0, -2 * (1 - kb) * kb / kg, -2 * (1 - kr) * kr / kg],
            [1.0, 2 * (1 - kb), 0.0],
        ])
        # code values → normalised: subtract offsets, divide by spans
        norm = np.diag([1 / y_span, 1 / c_span, 1 / c_span])
        offset = np.array([y_off, c_off, c_off])
        bgr_from_rgb = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], float)
        m = 255.0 * bgr_from_rgb @ rgb_from_ycc @ norm
        to_bgr = np.hstack([m, (-m @ offset)[:, None]])
        inv = np.linalg.inv(m)
        to_yuv = np.hstack([inv, offset[:, None]])
        return cls(to_bgr.astype(np.float32), to_yuv.astype(np.float32), layout)

    # --- the window: planes → BGR ---------------------------------------------------------

    def aligned(self, box: CropBox) -> CropBox:
        """``box`` moved by at most one pixel so that it starts on a chroma sample and spans whole
        ones: then the chroma planes map onto the box exactly."""
        ax, ay = 1 << self.layout.sx, 1 << self.layout.sy
        side = box.size + (-box.size) % max(ax, ay)
        return CropBox(box.x - box.x % ax, box.y - box.y % ay, side)

    def _grid(self, x0: int, y0: int, x1: int, y1: int) -> tuple[int, int, int, int]:
        """The rectangle grown to whole chroma samples and clipped to the picture."""
        ax, ay = 1 << self.layout.sx, 1 << self.layout.sy
        x0, y0 = max(0, x0 // ax * ax), max(0, y0 // ay * ay)
        x1 = min(self.layout.width, -(-x1 // ax) * ax)
        y1 = min(self.layout.height, -(-y1 // ay) * ay)
        return x0, y0, x1, y1

    def window(self, pic: Picture, box: CropBox, size: int) -> np.ndarray:
        """(size, size, 3) uint8 BGR: the square ``box`` (which may reach past the edges: they
        are replicated), resized to ``size``.

        Each plane is cut, edge-padded and resized to ``size`` first (chroma straight from its
        own resolution), and only then converted: the conversion runs on size² pixels, not on
        the box's."""
        lay = self.layout
        box = self.aligned(box)
        ys = _square(pic.y, box.x, box.y, box.size, size)
        cx, cy = box.x >> lay.sx, box.y >> lay.sy
        csize_x, csize_y = -(-(box.x + box.size) >> lay.sx) - cx, -(-(box.y + box.size) >> lay.sy) - cy
        us = _rect(pic.u, cx, cy, csize_x, csize_y, size)
        vs = _rect(pic.v, cx, cy, csize_x, csize_y, size)
        bgr = cv2.transform(cv2.merge([ys, us, vs]), self.to_bgr)
        return np.clip(bgr + 0.5, 0, 255).astype(np.uint8)

    # --- the blend: BGR → planes, through the mask ---------------------------------------

    def blend(self, pic: Picture, box: CropBox, synced: np.ndarray, mask: np.ndarray) -> None:
        """Blend ``synced`` ((S, S, 3) uint8 BGR, any S) into ``pic`` at ``box`` through ``mask``
        ((box.size, box.size) float32 in [0, 1]); samples where the mask is 0 are not written."""
        lay = self.layout
        box = self.aligned(box)
        if mask.shape[0] != box.size:  # an odd box grew by one: the mask does not reach the new edge
            mask = _take(mask, 0, 0, box.size, box.size, fill=0)
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            return
        # the mask's bounding rectangle in picture coordinates, clipped and grown to the chroma grid
        x0, y0, x1, y1 = self._grid(box.x + int(cols[0]), box.y + int(rows[0]),
                                    box.x + int(cols[-1]) + 1, box.y + int(rows[-1]) + 1)
        if x1 <= x0 or y1 <= y0:
            return
        # converted at the model's size; each plane then resized to the box at its own resolution
        ycc = cv2.transform(synced.astype(np.float32), self.to_yuv)
        bx0, by0, bx1, by1 = x0 - box.x, y0 - box.y, x1 - box.x, y1 - box.y  # the rectangle in box pixels
        m = _take(mask, bx0, by0, bx1, by1, fill=0)
        y_new = _take(_resized(ycc[:, :, 0], box.size, box.size), bx0, by0, bx1, by1)
        top = float(lay.max_value)
        _mix(pic.y[y0:y1, x0:x1], y_new, m, top)
        ax, ay = 1 << lay.sx, 1 << lay.sy
        csize = ((x1 - x0) >> lay.sx, (y1 - y0) >> lay.sy)
        mc = cv2.resize(m, csize, interpolation=cv2.INTER_AREA) if (ax, ay) != (1, 1) else m
        # the box at chroma resolution: box.size / 2 (4:2:0) samples, the rectangle within it
        cw, ch = -(-box.size // ax), -(-box.size // ay)
        cb = (bx0 // ax, by0 // ay)  # exact: the rectangle and the aligned box both start on chroma samples
        planes = []
        for k in (1, 2):
            full = _resized(ycc[:, :, k], cw, ch)
            planes.append(_take(full, cb[0], cb[1], cb[0] + csize[0], cb[1] + csize[1]))
        cy0, cy1, cx0, cx1 = y0 >> lay.sy, y1 >> lay.sy, x0 >> lay.sx, x1 >> lay.sx
        _mix(pic.u[cy0:cy1, cx0:cx1], planes[0], mc, top)
        _mix(pic.v[cy0:cy1, cx0:cx1], planes[1], mc, top)


def _resized(plane: np.ndarray, w: int, h: int) -> np.ndarray:
    if plane.shape[1] == w and plane.shape[0] == h:
        return plane
    interp = cv2.INTER_AREA if w < plane.shape[1] else cv2.INTER_CUBIC
    return cv2.resize(plane, (w, h), interpolation=interp)


def _take(a: np.ndarray, x0: int, y0: int, x1: int, y1: int, fill: float | None = None) -> np.ndarray:
    """a[y0:y1, x0:x1] where the rectangle may leave ``a``: outside it, ``fill`` or the edge pixels."""
    h, w = a.shape[:2]
    cx0, cy0 = min(max(0, x0), w - 1), min(max(0, y0), h - 1)
    cx1, cy1 = max(cx0 + 1, min(w, x1)), max(cy0 + 1, min(h, y1))
    out = a[cy0:cy1, cx0:cx1]
    pads = (cy0 - y0, y1 - cy1, cx0 - x0, x1 - cx1)
    if min(pads) < 0:  # the rectangle lies wholly outside: the nearest edge, stretched
        if fill is not None:
            return np.full((y1 - y0, x1 - x0, *a.shape[2:]), fill, a.dtype)
        return cv2.resize(out, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
    if any(pads):
        if fill is None:
            return cv2.copyMakeBorder(out, *pads, borderType=cv2.BORDER_REPLICATE)
        return cv2.copyMakeBorder(out, *pads, borderType=cv2.BORDER_CONSTANT, value=fill)
    return out


def _rect(plane: np.ndarray, x: int, y: int, w: int, h: int, size: int) -> np.ndarray:
    """The w x h rectangle at (x, y) of ``plane`` (edges replicated past its borders), resized to
    size x size, as float32."""
    region = _take(plane, x, y, x + w, y + h)
    return _resized(region.astype(np.float32), size, size)


def _square(plane: np.ndarray, x: int, y: int, side: int, size: int) -> np.ndarray:
    return _rect(plane, x, y, side, side, size)


def _mix(plane: np.ndarray, new: np.ndarray, m: np.ndarray, top: float) -> None:
    """plane ← plane·(1−m) + new·m, rounded, only where m > 0 (in place)."""
    where = m > 0
    old = plane.astype(np.float32)
    mixed = old + m * (new - old)
    np.copyto(plane, np.clip(mixed + 0.5, 0, top).astype(plane.dtype), where=where)
