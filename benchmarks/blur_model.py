"""A stand-in model with a fixed cost per pixel, for bench_command.py: a command-contract program.

    python benchmarks/blur_model.py VIDEO AUDIO OUTPUT --passes N

Every frame goes through N 5x5 Gaussian blur passes (the cost of a model that is linear in the
pixels it is handed), streamed from one ffmpeg to another and written as a model would write it
(H.264, veryfast, crf 18). The audio argument is accepted and ignored.
"""

from __future__ import annotations

import argparse
import json
import subprocess

import cv2
import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("video"), ap.add_argument("audio"), ap.add_argument("output")
    ap.add_argument("--passes", type=int, default=20)
    args = ap.parse_args()
    info = json.loads(subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                                      "stream=width,height,r_frame_rate", "-of", "json", args.video],
                                     capture_output=True, text=True, check=True).stdout)["streams"][0]
    w, h, rate = int(info["width"]), int(info["height"]), info["r_frame_rate"]
    dec = subprocess.Popen(["ffmpeg", "-v", "error", "-i", args.video, "-f", "rawvideo", "-pix_fmt", "bgr24", "-"],
                           stdout=subprocess.PIPE)
    enc = subprocess.Popen(["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{w}x{h}",
                            "-r", rate, "-i", "-", "-c:v", "libx264", "-preset", "veryfast", "-crf", "18",
                            "-pix_fmt", "yuv420p", args.output], stdin=subprocess.PIPE)
    assert dec.stdout is not None and enc.stdin is not None
    while len(buf := dec.stdout.read(w * h * 3)) == w * h * 3:
        frame = np.frombuffer(buf, np.uint8).reshape(h, w, 3)
        for _ in range(args.passes):
            frame = cv2.GaussianBlur(frame, (5, 5), 0)
        enc.stdin.write(frame.tobytes())
    enc.stdin.close()
    if dec.wait() or enc.wait():
        raise SystemExit("ffmpeg failed")


if __name__ == "__main__":
    main()
