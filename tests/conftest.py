"""Settings every test starts from.

The track cache (lipsync.video.trackcache) is off: a test renders the same few clips many times,
and each must run its own face track unless it is testing the cache (those set
``LIPSYNC_TRACK_CACHE`` themselves). Set in the environment, so CLI subprocesses inherit it.
"""

import os

os.environ["LIPSYNC_TRACK_CACHE"] = "off"
