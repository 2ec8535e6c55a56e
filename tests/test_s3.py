"""lipsync.io.s3 against a real S3 server (moto, in a subprocess) through the real minio client.

Faults are made the way production makes them: the server is killed, restarted, or refuses the
credentials. Nothing in the client is patched; what the client did is read from the server's
request log.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest
from lipsync.errors import (
    AccessDenied,
    InputNotFound,
    InputTooLarge,
    InvalidSpec,
    StorageMisconfigured,
    StorageUnavailable,
)
from lipsync.io import s3
from .s3server import ACCESS_KEY, BUCKET, SECRET_KEY, FlakyProxy, S3Server, running, s3_env

MiB = 1024 * 1024
PREFIX = f"s3://{BUCKET}/renders/job-1"
METADATA = {"job": "job-1", "uid": "6f1c2a", "model": "baseline", "video-sha256": "ab" * 32}


@pytest.fixture
def s3_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    yield from running(tmp_path, monkeypatch)


def upload(key: str, data: bytes) -> None:
    s3.client_from_env().put_object(BUCKET, key, io.BytesIO(data), len(data))


def keys(prefix: str = "") -> list[str]:
    return sorted(
        o.object_name for o in s3.client_from_env().list_objects(BUCKET, prefix=prefix, recursive=True)
    )


def gets_of(server: S3Server, key: str) -> int:
    return sum(1 for r in server.requests() if r.method == "GET" and r.path == f"/{BUCKET}/{key}")


def pending_uploads(server: S3Server) -> list[str]:
    """Multipart uploads begun and neither completed nor aborted (minio lists them only privately)."""
    client = boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
    )
    return [u["Key"] for u in client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])]


def big_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------- configuration
def test_parse_s3_uri() -> None:
    assert s3.parse_s3_uri("s3://bkt/a/b c?.mp4") == ("bkt", "a/b c?.mp4")
    assert s3.parse_s3_uri("s3://bkt") == ("bkt", "")
    for bad in ("https://b/k", "s3:///k", "s3://b/k", "s3://Bad_Bucket/k"):
        with pytest.raises(InvalidSpec):
            s3.parse_s3_uri(bad)


def test_config_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret")
    aws = s3.S3Config.from_env()
    assert (aws.endpoint, aws.secure, aws.region) == ("s3.amazonaws.com", True, "us-east-1")
    assert "very-secret" not in repr(aws)

    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://ignored.example")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://minio.storage:9000")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    minio = s3.S3Config.from_env()
    assert (minio.endpoint, minio.secure, minio.region) == ("minio.storage:9000", False, "eu-west-1")
    assert s3.client_from_env() is s3.client_from_env(), "one client per process"

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "https://user:pass-word@minio.storage/s3")
    with pytest.raises(StorageMisconfigured, match="no path") as err:
        s3.client_from_env()
    assert "pass-word" not in str(err.value)


# ---------------------------------------------------------------------------- downloads
def test_download_checksum_and_atomic_rename(s3_server: S3Server, tmp_path: Path) -> None:
    upload("in/hello.txt", b"hello")
    dest = tmp_path / "inputs" / "hello.txt"
    digest = s3.download(f"s3://{BUCKET}/in/hello.txt", dest)
    assert digest == hashlib.sha256(b"hello").hexdigest()
    assert dest.read_bytes() == b"hello"
    assert [p.name for p in dest.parent.iterdir()] == ["hello.txt"], "no temporary file left"


def test_download_size_limit(s3_server: S3Server, tmp_path: Path) -> None:
    upload("in/video.mp4", b"x" * 1000)
    dest = tmp_path / "video.mp4"
    with pytest.raises(InputTooLarge, match="in/video.mp4.*999"):
        s3.download(f"s3://{BUCKET}/in/video.mp4", dest, max_bytes=999)
    assert list(tmp_path.iterdir()) == [s3_server.log_path], "neither the file nor a partial one"
    assert s3.download(f"s3://{BUCKET}/in/video.mp4", dest, max_bytes=1000)


def test_missing_key_and_bucket_fail_at_once(s3_server: S3Server, tmp_path: Path) -> None:
    s3_server.requests()  # the log exists
    start = time.monotonic()
    with pytest.raises(InputNotFound, match=f"s3://{BUCKET}/in/nothing.mp4"):
        s3.download(f"s3://{BUCKET}/in/nothing.mp4", tmp_path / "x")
    with pytest.raises(InputNotFound, match="bucket 'no-such-bucket'"):
        s3.download("s3://no-such-bucket/in/video.mp4", tmp_path / "x")
    assert time.monotonic() - start < 2
    assert len(s3_server.requests()) == 2, "no retries"
    assert not (tmp_path / "x").exists()


def test_download_cached_fetches_each_etag_once(s3_server: S3Server, tmp_path: Path) -> None:
    uri = f"s3://{BUCKET}/weights/wav2lip.pth"
    upload("weights/wav2lip.pth", b"v1" * 1000)
    first = s3.download_cached(uri, tmp_path / "cache")
    second = s3.download_cached(uri, tmp_path / "cache")
    assert first == second and first.read_bytes() == b"v1" * 1000
    assert gets_of(s3_server, "weights/wav2lip.pth") == 1, "the second call is answered from the cache"

    upload("weights/wav2lip.pth", b"v2" * 1000)  # new weights, new ETag
    third = s3.download_cached(uri, tmp_path / "cache")
    assert third != first and third.read_bytes() == b"v2" * 1000
    assert gets_of(s3_server, "weights/wav2lip.pth") == 2


def test_download_cached_by_two_jobs_at_once_fetches_once(s3_server: S3Server, tmp_path: Path) -> None:
    upload("weights/big.pth", os.urandom(8 * MiB))
    with ThreadPoolExecutor(2) as pool:
        paths = list(
            pool.map(lambda _: s3.download_cached(f"s3://{BUCKET}/weights/big.pth", tmp_path), range(2))
        )
    assert paths[0] == paths[1]
    assert gets_of(s3_server, "weights/big.pth") == 1


def test_download_prefix_keeps_layout_and_skips_unchanged(s3_server: S3Server, tmp_path: Path) -> None:
    upload("weights/latentsync/unet.pt", b"unet")
    upload("weights/latentsync/whisper/tiny.pt", b"whisper")
    dest = s3.download_prefix(f"s3://{BUCKET}/weights/latentsync/", tmp_path / "ls")
    assert (dest / "unet.pt").read_bytes() == b"unet"
    assert (dest / "whisper" / "tiny.pt").read_bytes() == b"whisper"

    upload("weights/latentsync/unet.pt", b"unet-2")
    s3.download_prefix(f"s3://{BUCKET}/weights/latentsync", tmp_path / "ls")
    assert (dest / "unet.pt").read_bytes() == b"unet-2"
    assert gets_of(s3_server, "weights/latentsync/whisper/tiny.pt") == 1, "unchanged files are kept"

    with pytest.raises(InputNotFound, match="no objects"):
        s3.download_prefix(f"s3://{BUCKET}/weights/nothing", tmp_path / "none")


# ---------------------------------------------------------------------------- the output store
def test_put_round_trip_multipart_with_metadata(s3_server: S3Server, tmp_path: Path) -> None:
    store = s3.S3Store(PREFIX + "/")
    assert store.uri == PREFIX
    assert store.head("output.mp4") is None and store.get("output.mp4") is None

    src = big_file(tmp_path / "output.mp4", 12 * MiB)
    assert store.put("output.mp4", src, content_type="video/mp4", metadata=METADATA) == f"{PREFIX}/output.mp4"
    assert any("partNumber=3" in r.path for r in s3_server.requests()), "uploaded in parts"

    assert store.head("output.mp4") == METADATA
    assert s3.client_from_env().stat_object(BUCKET, "renders/job-1/output.mp4").content_type == "video/mp4"
    assert s3.download(f"{PREFIX}/output.mp4", tmp_path / "back.mp4") == sha256(src)
    assert keys() == ["renders/job-1/output.mp4"], "no temporary keys remain"

    (tmp_path / "metrics.json").write_text('{"ok": true}')
    store.put("metrics.json", tmp_path / "metrics.json", content_type="application/json", metadata={})
    assert store.get("metrics.json") == b'{"ok": true}'
    (tmp_path / "run.log").touch()
    store.put("logs/run.log", tmp_path / "run.log", content_type="text/plain", metadata={})
    assert store.get("logs/run.log") == b"" and store.head("logs/run.log") == {}
    assert keys() == ["renders/job-1/logs/run.log", "renders/job-1/metrics.json", "renders/job-1/output.mp4"]


def test_store_on_a_missing_bucket_says_so(s3_server: S3Server) -> None:
    store = s3.S3Store("s3://no-such-bucket/renders/job-1")
    with pytest.raises(InputNotFound, match="bucket 'no-such-bucket'"):
        store.head("metrics.json")
    with pytest.raises(InputNotFound, match="bucket 'no-such-bucket'"):
        store.get("metrics.json")


def test_put_refuses_names_outside_the_prefix(s3_server: S3Server, tmp_path: Path) -> None:
    store = s3.S3Store(PREFIX)
    for bad in ("../other/output.mp4", "/output.mp4", ".tmp/x", ""):
        with pytest.raises(ValueError):
            store.put(bad, tmp_path, content_type="video/mp4", metadata={})
    with pytest.raises(ValueError, match="Job"):
        store.put("output.mp4", tmp_path, content_type="video/mp4", metadata={"Job": "x"})


@pytest.mark.slow
def test_put_survives_a_server_restart_mid_upload(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(s3.RETRY_SECONDS_ENV, "60")
    src = big_file(tmp_path / "output.mp4", 40 * MiB)  # 8 parts
    restarter = s3_server.kill_when(lambda r: "partNumber=" in r.path, down_for=1.0)

    with caplog.at_level(logging.WARNING, logger="lipsync.io.s3"):
        uri = s3.S3Store(PREFIX).put("output.mp4", src, content_type="video/mp4", metadata=METADATA)
    restarter.join(timeout=30)

    first, _ = s3_server.incarnations()
    assert any("partNumber=" in r.path for r in first)
    assert not any(r.method == "POST" and "uploadId=" in r.path for r in first), "killed before completion"
    assert caplog.records, "the fault was retried, and said so"
    assert not any(SECRET_KEY in r.getMessage() or ACCESS_KEY in r.getMessage() for r in caplog.records)

    assert s3.download(uri, tmp_path / "back.mp4") == sha256(src)
    assert s3.S3Store(PREFIX).head("output.mp4") == METADATA
    assert keys() == ["renders/job-1/output.mp4"], "no temporary keys remain"
    assert not pending_uploads(s3_server)


def test_download_survives_a_connection_reset_mid_stream(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    data = os.urandom(12 * MiB)
    upload("in/video.mp4", data)
    with FlakyProxy(s3_server.port) as proxy, caplog.at_level(logging.WARNING, logger="lipsync.io.s3"):
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
        proxy.cut_after(4 * MiB, direction="down")
        digest = s3.download(f"s3://{BUCKET}/in/video.mp4", tmp_path / "in" / "video.mp4")
    assert proxy.cuts == 1 and len(caplog.records) == 1
    assert digest == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "in" / "video.mp4").read_bytes() == data
    assert [p.name for p in (tmp_path / "in").iterdir()] == ["video.mp4"], "no partial file left"


def test_put_survives_a_connection_reset_mid_upload(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = big_file(tmp_path / "output.mp4", 12 * MiB)
    with FlakyProxy(s3_server.port) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
        proxy.cut_after(2 * MiB, direction="up")
        uri = s3.S3Store(PREFIX).put("output.mp4", src, content_type="video/mp4", metadata=METADATA)
    assert proxy.cuts == 1
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint)
    assert s3.download(uri, tmp_path / "back.mp4") == sha256(src)
    assert s3.S3Store(PREFIX).head("output.mp4") == METADATA
    assert keys() == ["renders/job-1/output.mp4"], "no temporary keys remain"
    assert not pending_uploads(s3_server), "the broken multipart upload was aborted"


def test_put_gives_up_after_the_bound_when_the_server_stays_down(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(s3.RETRY_SECONDS_ENV, "3")
    src = big_file(tmp_path / "output.mp4", 20 * MiB)
    s3_server.kill_when(lambda r: "partNumber=" in r.path)

    start = time.monotonic()
    with pytest.raises(StorageUnavailable) as err:
        s3.S3Store(PREFIX).put("output.mp4", src, content_type="video/mp4", metadata=METADATA)
    elapsed = time.monotonic() - start
    assert 3 <= elapsed < 3 + 5, elapsed
    assert f"{PREFIX}/output.mp4" in str(err.value) and "did not answer" in str(err.value)
    assert err.value.transient and err.value.exit_code == 75
    final = f"/{BUCKET}/renders/job-1/output.mp4"
    assert not any(r.path.startswith(final) for r in s3_server.requests()), (
        "nothing was written to the final key"
    )


def test_wrong_credentials_fail_at_once_naming_the_bucket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with S3Server(tmp_path, buckets=[BUCKET], auth=True) as server:
        for k, v in s3_env(server).items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv(s3.RETRY_SECONDS_ENV, "30")
        src = big_file(tmp_path / "output.mp4", 1000)

        start = time.monotonic()
        with pytest.raises(AccessDenied, match=f"bucket '{BUCKET}'") as err:
            s3.download(f"s3://{BUCKET}/in/video.mp4", tmp_path / "video.mp4")
        with pytest.raises(AccessDenied, match=f"bucket '{BUCKET}'"):
            s3.S3Store(PREFIX).put("output.mp4", src, content_type="video/mp4", metadata={})
        assert time.monotonic() - start < 3, "no retries"
        assert SECRET_KEY not in str(err.value) and ACCESS_KEY not in str(err.value)
        gets = [r for r in server.requests() if r.method == "GET"]
        assert len(gets) == 1 and gets[0].status == 403, "one request, not retried"


def test_tls_with_a_private_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with S3Server(tmp_path, buckets=[BUCKET], tls=True) as server:
        for k, v in s3_env(server).items():
            monkeypatch.setenv(k, v)
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        monkeypatch.setenv("AWS_CA_BUNDLE", str(server.ca_path))
        upload("in/hello.txt", b"hello")
        assert (
            s3.download(f"s3://{BUCKET}/in/hello.txt", tmp_path / "a") == hashlib.sha256(b"hello").hexdigest()
        )

        monkeypatch.delenv("AWS_CA_BUNDLE")  # trust only the public CAs: a configuration error
        start = time.monotonic()
        with pytest.raises(StorageMisconfigured, match="not trusted.*AWS_CA_BUNDLE"):
            s3.download(f"s3://{BUCKET}/in/hello.txt", tmp_path / "b")
        assert time.monotonic() - start < 2, "not retried"


# ---------------------------------------------------------------------------- server errors
class _Canned(BaseHTTPRequestHandler):
    """Gives every GET the same answer, and counts them."""

    answer: tuple[int, str, bytes]
    seen = 0

    def do_GET(self) -> None:
        type(self).seen += 1
        status, content_type, body = self.answer
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.parametrize(
    "status, content_type, body",
    [
        (503, "application/xml", b"<Error><Code>SlowDown</Code><Message>Reduce your rate</Message></Error>"),
        (500, "application/xml", b"<Error><Code>InternalError</Code><Message>oops</Message></Error>"),
        (502, "text/html", b"<html>Bad Gateway</html>"),  # a proxy in front of the store
    ],
)
def test_server_errors_are_retried_until_the_bound(
    status: int, content_type: str, body: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler: type[_Canned] = type("Answer", (_Canned,), {"answer": (status, content_type, body), "seen": 0})
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{httpd.server_address[1]}")
        monkeypatch.setenv(s3.RETRY_SECONDS_ENV, "2")
        start = time.monotonic()
        with pytest.raises(StorageUnavailable, match=f"s3://{BUCKET}/in/video.mp4: the store did not answer"):
            s3.download(f"s3://{BUCKET}/in/video.mp4", tmp_path / "video.mp4")
        assert 2 <= time.monotonic() - start < 4
        assert handler.seen > 1, "retried"
        httpd.shutdown()
    assert not (tmp_path / "video.mp4").exists()
