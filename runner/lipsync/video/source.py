"""The output timeline: which source frame stands at each output frame.

When the output is longer than the video (``timing.follow: audio`` with longer speech), the
video plays forward, then backward, then forward again (ping-pong), so there is no jump cut.
The render engine reads frames in this order (``render.timeline``).
"""

from __future__ import annotations


def source_index(i: int, n_src: int) -> int:
    """Ping-pong: 0, 1, …, n-1, n-2, …, 1, 0, 1, …"""
    if n_src <= 1:
        return 0
    k = i % (2 * (n_src - 1))
    return k if k < n_src else 2 * (n_src - 1) - k
