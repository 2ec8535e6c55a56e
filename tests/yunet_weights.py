"""A YuNet-shaped ONNX model for tests: OpenCV's FaceDetectorYN runs it exactly as it runs YuNet.

The real weights cannot be made here, so this network has YuNet's input and its twelve outputs
(cls, obj, bbox, kps at strides 8, 16, 32) and a rule a test can reason about: a stride-32 cell of
the (padded) frame that is bright (mean grey 255) is a face of 64×64 px centred on the cell, with
its five landmarks at fixed places in it. Everything else scores 0.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

STRIDES = (8, 16, 32)
# landmarks as offsets from the cell's top-left corner, in strides: right eye, left eye, nose, mouth right, left
KPS = np.array([0.1, 0.2, 0.9, 0.2, 0.5, 0.5, 0.2, 0.85, 0.8, 0.85], np.float32)


def _head(name: str, src: str, s: int, channels: int, weight: float, bias: np.ndarray) -> list:
    """A 1x1 conv over the stride-s average of the frame, reshaped to YuNet's (1, N, channels)."""
    w = np.full((channels, 3, 1, 1), weight, np.float32)
    return [
        numpy_helper.from_array(w, f"{name}_w"), numpy_helper.from_array(bias.astype(np.float32), f"{name}_b"),
        helper.make_node("Conv", [src, f"{name}_w", f"{name}_b"], [f"{name}_c"]),
        helper.make_node("Transpose", [f"{name}_c"], [f"{name}_t"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", [f"{name}_t", "shape_" + str(channels)], [name]),
    ]


def write(dest: Path) -> Path:
    nodes, inits, outputs = [], [], []
    for c in (1, 4, 10):
        inits.append(numpy_helper.from_array(np.array([1, -1, c], np.int64), f"shape_{c}"))
    heads: dict[str, list] = {"cls": [], "obj": [], "bbox": [], "kps": []}
    for s in STRIDES:
        pooled = f"pool_{s}"
        nodes.append(helper.make_node("AveragePool", ["input"], [pooled], kernel_shape=[s, s], strides=[s, s]))
        bright = 1.0 / (3 * 255) if s == 32 else 0.0
        for kind, ch, weight, bias in (
            ("cls", 1, bright, np.zeros(1)),
            ("obj", 1, bright, np.zeros(1)),
            ("bbox", 4, 0.0, np.array([0.5, 0.5, math.log(2), math.log(2)])),
            ("kps", 10, 0.0, KPS),
        ):
            name = f"{kind}_{s}"
            parts = _head(name, pooled, s, ch, weight, bias)
            inits += parts[:2]
            nodes += parts[2:]
            heads[kind].append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, None, ch]))
    for kind in ("cls", "obj", "bbox", "kps"):
        outputs += heads[kind]
    graph = helper.make_graph(nodes, "yunet_shaped", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, None, None])],
                              outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    dest.write_bytes(model.SerializeToString())
    return dest
