"""Runs the real `lipsync` CLI with an unexpected exception injected at one place:

    python inject_fault.py {detector,model,encoder} lipsync-args...

detector: the face detector raises on its first call; model: the baseline model raises on its
second batch; encoder: the planar writer raises after a few frames. Used by the exit-code tests:
whatever fails, the runner must exit 1 with InternalError, leave no ffmpeg behind and publish
nothing.
"""

import sys

from lipsync import cli
from lipsync.models import baseline
from lipsync.render import frames
from lipsync.video import faces

where, args = sys.argv[1], sys.argv[2:]


def boom(*a, **k):
    raise RuntimeError(f"injected fault in the {where}")


if where == "detector":
    class Failing:  # every face detector the track may ask for raises on its first call
        def __init__(self, *a, **k):
            pass

        detect = detect_near = boom

    faces.detector = Failing
elif where == "model":
    infer, calls = baseline.BaselineModel.infer, []

    def failing_infer(self, crops, idx):
        calls.append(1)
        if len(calls) > 1:
            boom()
        return infer(self, crops, idx)

    baseline.BaselineModel.infer = failing_infer
elif where == "encoder":
    write = frames.PlanarWriter.write

    def failing_write(self, picture):
        if self.frames >= 5:
            boom()
        return write(self, picture)

    frames.PlanarWriter.write = failing_write
else:
    sys.exit(f"unknown fault place {where!r}")

sys.exit(cli.main(args))
