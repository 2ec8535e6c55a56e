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
from ..video import crop as cropping
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

    def _grid(self, x0: int, y0: int, x1: int, y1: int) -> tuple[int, int, int, int]:
        """The rectangle grown to whole chroma samples and clipped to the picture."""
        ax, ay = 1 << self.layout.sx, 1 << self.layout.sy
        x0, y0 = max(0, x0 // ax * ax), max(0, y0 // ay * ay)
        x1 = min(self.layout.width, -(-x1 // ax) * ax)
        y1 = min(self.layout.height, -(-y1 // ay) * ay)
        return x0, y0, x1, y1

    def region_bgr(self, pic: Picture, x0: int, y0: int, x1: int, y1: int) -> tuple[np.ndarray, int, int]:
        """(h, w, 3) uint8 BGR of the rectangle (grown to the chroma grid), and its top-left corner."""
        x0, y0, x1, y1 = self._grid(x0, y0, x1, y1)
        lay = self.layout
        y = pic.y[y0:y1, x0:x1]
        u = pic.u[y0 >> lay.sy:y1 >> lay.sy, x0 >> lay.sx:x1 >> lay.sx]
        v = pic.v[y0 >> lay.sy:y1 >> lay.sy, x0 >> lay.sx:x1 >> lay.sx]
        size = (x1 - x0, y1 - y0)
        if lay.sx or lay.sy:
            u = cv2.resize(u, size, interpolation=cv2.INTER_LINEAR)
            v = cv2.resize(v, size, interpolation=cv2.INTER_LINEAR)
        ycc = cv2.merge([y.astype(np.float32), u.astype(np.float32), v.astype(np.float32)])
        bgr = cv2.transform(ycc, self.to_bgr)
        return np.clip(bgr + 0.5, 0, 255).astype(np.uint8), x0, y0

    def window(self, pic: Picture, box: CropBox, size: int) -> np.ndarray:
        """(size, size, 3) uint8 BGR: the square ``box`` (which may reach past the edges: they
        are replicated), resized to ``size``. The same pixels ``crop.cut`` gives of a BGR frame."""
        x0, y0 = max(0, box.x), max(0, box.y)
        x1, y1 = min(self.layout.width, box.x + box.size), min(self.layout.height, box.y + box.size)
        if x1 <= x0 or y1 <= y0:  # entirely outside: the nearest edge pixels
            x0, y0 = min(max(0, box.x), self.layout.width - 1), min(max(0, box.y), self.layout.height - 1)
            x1, y1 = x0 + 1, y0 + 1
        region, rx, ry = self.region_bgr(pic, x0, y0, x1, y1)
        return cropping.cut(region, CropBox(box.x - rx, box.y - ry, box.size), size)

    # --- the blend: BGR → planes, through the mask ---------------------------------------

    def blend(self, pic: Picture, box: CropBox, synced: np.ndarray, mask: np.ndarray) -> None:
        """Blend ``synced`` ((S, S, 3) uint8 BGR, any S) into ``pic`` at ``box`` through ``mask``
        ((box.size, box.size) float32 in [0, 1]); samples where the mask is 0 are not written."""
        lay = self.layout
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            return
        # the mask's bounding rectangle in picture coordinates, clipped and grown to the chroma grid
        x0, y0, x1, y1 = self._grid(box.x + int(cols[0]), box.y + int(rows[0]),
                                    box.x + int(cols[-1]) + 1, box.y + int(rows[-1]) + 1)
        if x1 <= x0 or y1 <= y0:
            return
        if synced.shape[0] != box.size:
            synced = cv2.resize(synced, (box.size, box.size), interpolation=cv2.INTER_CUBIC)
        # the box's mask and pixels over the rectangle (zeros / edge pixels where it leaves the box)
        bx0, by0 = x0 - box.x, y0 - box.y
        bx1, by1 = x1 - box.x, y1 - box.y
        pads = (max(0, -by0), max(0, by1 - box.size), max(0, -bx0), max(0, bx1 - box.size))
        sl = (slice(max(0, by0), min(box.size, by1)), slice(max(0, bx0), min(box.size, bx1)))
        m = mask[sl]
        s = synced[sl]
        if any(pads):
            m = cv2.copyMakeBorder(m, *pads, borderType=cv2.BORDER_CONSTANT, value=0)
            s = cv2.copyMakeBorder(s, *pads, borderType=cv2.BORDER_REPLICATE)
        ycc = cv2.transform(s.astype(np.float32), self.to_yuv)
        top = float(lay.max_value)
        _mix(pic.y[y0:y1, x0:x1], ycc[:, :, 0], m, top)
        if lay.sx or lay.sy:
            csize = ((x1 - x0) >> lay.sx, (y1 - y0) >> lay.sy)
            mc = cv2.resize(m, csize, interpolation=cv2.INTER_AREA)
            uc = cv2.resize(ycc[:, :, 1], csize, interpolation=cv2.INTER_AREA)
            vc = cv2.resize(ycc[:, :, 2], csize, interpolation=cv2.INTER_AREA)
        else:
            mc, uc, vc = m, ycc[:, :, 1], ycc[:, :, 2]
        cy0, cy1, cx0, cx1 = y0 >> lay.sy, y1 >> lay.sy, x0 >> lay.sx, x1 >> lay.sx
        _mix(pic.u[cy0:cy1, cx0:cx1], uc, mc, top)
        _mix(pic.v[cy0:cy1, cx0:cx1], vc, mc, top)


def _mix(plane: np.ndarray, new: np.ndarray, m: np.ndarray, top: float) -> None:
    """plane ← plane·(1−m) + new·m, rounded, only where m > 0 (in place)."""
    where = m > 0
    old = plane.astype(np.float32)
    mixed = old + m * (new - old)
    np.copyto(plane, np.clip(mixed + 0.5, 0, top).astype(plane.dtype), where=where)
