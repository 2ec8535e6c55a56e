"""Download limits (lipsync.io.limits): sizes that cover inputs, weights and weight prefixes, and
one deadline per download that a server dripping bytes cannot outlast."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lipsync.errors import InputTooLarge, StorageUnavailable
from lipsync.io import s3
from lipsync.io.fetch import fetch
from lipsync.pipeline import fetch_weights

from . import s3server

DRIP_FOR_S = 20.0  # the server gives up after this: a runner without a deadline fails the test, not hangs it


class _Drip(http.server.BaseHTTPRequestHandler):
    """Promises 1000 bytes, then sends one every 0.25 s (for GET on any path: a URL or an S3 key)."""

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.send_header("ETag", '"drip"')
        self.end_headers()
        start = time.monotonic()
        try:
            while time.monotonic() - start < DRIP_FOR_S:
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.25)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def drip() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Drip)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_https_slow_drip_hits_the_download_deadline(drip, tmp_path, monkeypatch):
    monkeypatch.setenv("LIPSYNC_DOWNLOAD_DEADLINE_SECONDS", "2")
    start = time.monotonic()
    with pytest.raises(StorageUnavailable, match="within 2 s.*LIPSYNC_DOWNLOAD_DEADLINE_SECONDS") as err:
        fetch(f"{drip}/face.mp4", tmp_path, field="spec.video")
    assert err.value.transient  # the Job's backoff tries again later
    assert time.monotonic() - start < 6
    assert list(tmp_path.iterdir()) == [], "no partial file left"


def test_s3_slow_drip_hits_the_download_deadline(drip, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", drip)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("LIPSYNC_DOWNLOAD_DEADLINE_SECONDS", "2")
    start = time.monotonic()
    with pytest.raises(StorageUnavailable, match="within 2 s"):
        fetch("s3://media/in/face.mp4", tmp_path, field="spec.video")
    assert time.monotonic() - start < 6


@pytest.fixture
def s3_server(tmp_path, monkeypatch):
    yield from s3server.running(tmp_path, monkeypatch)


def put(key: str, size: int) -> str:
    import io

    s3.client_from_env().put_object(s3server.BUCKET, key, io.BytesIO(b"w" * size), size)
    return f"s3://{s3server.BUCKET}/{key}"


def test_input_size_limit_is_configurable(s3_server, tmp_path, monkeypatch):
    uri = put("in/face.mp4", 5000)
    monkeypatch.setenv("LIPSYNC_MAX_INPUT_BYTES", "4999")
    with pytest.raises(InputTooLarge, match="LIPSYNC_MAX_INPUT_BYTES"):
        fetch(uri, tmp_path, field="spec.video")
    monkeypatch.setenv("LIPSYNC_MAX_INPUT_BYTES", "5000")
    assert fetch(uri, tmp_path, field="spec.video")[0].stat().st_size == 5000


def test_weights_file_and_prefix_are_limited(s3_server, tmp_path, monkeypatch):
    monkeypatch.setenv("LIPSYNC_CACHE", str(tmp_path / "cache"))
    weights = put("models/wav2lip.pth", 3000)
    put("models/latentsync/a.pt", 2000)
    put("models/latentsync/sub/b.pt", 2000)
    monkeypatch.setenv("LIPSYNC_MAX_WEIGHTS_BYTES", "2999")
    with pytest.raises(InputTooLarge, match="LIPSYNC_MAX_WEIGHTS_BYTES"):
        fetch_weights(weights, tmp_path)
    # A prefix counts as a whole: two files under the limit each, over it together, and nothing fetched.
    monkeypatch.setenv("LIPSYNC_MAX_WEIGHTS_BYTES", "3999")
    with pytest.raises(InputTooLarge, match="4000 bytes.*LIPSYNC_MAX_WEIGHTS_BYTES"):
        fetch_weights("s3://lipsync/models/latentsync/", tmp_path)
    assert not (tmp_path / "weights").exists() or not any((tmp_path / "weights").rglob("*.pt"))
    monkeypatch.setenv("LIPSYNC_MAX_WEIGHTS_BYTES", "4000")
    folder, _ = fetch_weights("s3://lipsync/models/latentsync/", tmp_path)
    assert sorted(p.name for p in Path(folder).rglob("*.pt")) == ["a.pt", "b.pt"]
    # Inputs keep their own limit.
    monkeypatch.setenv("LIPSYNC_MAX_INPUT_BYTES", "100")
    assert fetch_weights(weights, tmp_path)[0].stat().st_size == 3000
