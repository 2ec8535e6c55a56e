"""S3 (MinIO, AWS, any S3-compatible store): inputs in, artifacts out, without losing either.

Why this module looks the way it does:

* **Credentials come from the environment only** (the names every S3 tool reads), never from the
  job spec, and never reach a log line or an error message: a LipSyncJob is readable by anyone
  who can list jobs, and its status and logs are copied around.
* **One retry layer.** The minio client is given its own urllib3 pool with short timeouts and
  urllib3 retries switched off, so every transient fault surfaces here and is retried with
  exponential backoff and full jitter, bounded in *total* time (``LIPSYNC_S3_RETRY_SECONDS``).
  When the bound is spent the runner exits with ``StorageUnavailable`` (transient: the Job's
  backoff tries again later); permanent faults (bad credentials, missing bucket or key) fail at
  once, since retrying them only delays the message the user needs.
* **Nothing is half-visible.** Downloads go to a temporary file that is renamed when complete;
  uploads go to a temporary key and are server-side copied to the final key with their metadata,
  so a reader of the final key sees either nothing or the whole, final object.

Environment: ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (``http(s)://host[:port]``; none:
AWS), ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``
(or ``AWS_DEFAULT_REGION``; default us-east-1), ``AWS_CA_BUNDLE`` (a private CA for https),
``LIPSYNC_S3_RETRY_SECONDS`` (default 120), ``LIPSYNC_S3_PART_SIZE`` (bytes, default 16 MiB,
at least 5 MiB).
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import json
import logging
import os
import random
import secrets
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TypeVar
from urllib.parse import urlsplit

import certifi
import urllib3
from minio import Minio
from minio.commonconfig import ComposeSource
from minio.error import MinioException, S3Error, ServerError
from minio.helpers import MAX_MULTIPART_COUNT, MIN_PART_SIZE, check_bucket_name

from .. import credentials, env
from . import limits
from .limits import Deadline
from ..errors import (
    AccessDenied,
    InputNotFound,
    InputTooLarge,
    InvalidSpec,
    InvalidWeights,
    LipSyncError,
    StorageMisconfigured,
    StorageUnavailable,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

AWS_ENDPOINT = "s3.amazonaws.com"
DEFAULT_REGION = "us-east-1"
DEFAULT_RETRY_SECONDS = 120.0
DEFAULT_PART_SIZE = 16 * 1024 * 1024
RETRY_SECONDS_ENV = "LIPSYNC_S3_RETRY_SECONDS"
PART_SIZE_ENV = "LIPSYNC_S3_PART_SIZE"

# Short enough that a dead peer is noticed well within the retry bound; the read timeout is per
# socket read, so long transfers are not cut off by it.
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0
_BACKOFF_FIRST_S = 0.5
_BACKOFF_CAP_S = 15.0
_CHUNK = 1024 * 1024
_TMP_DIR = ".tmp"

_DENIED_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"})
_TRANSIENT_CODES = frozenset(
    {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "XMinioServerNotInitialized"}
)
# Faults of the transport itself. Not plain OSError: a full local disk is not the network's fault
# and must not be retried as one.
_TRANSPORT_ERRORS = (
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
)


# ---------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class S3Config:
    """Where the store is and who we are; ``repr`` leaves the secrets out so it is safe to log."""

    endpoint: str
    secure: bool
    region: str
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    ca_bundle: str | None = None

    @classmethod
    def from_env(cls) -> S3Config:
        url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        endpoint, secure = _parse_endpoint(url) if url else (AWS_ENDPOINT, True)
        return cls(
            endpoint=endpoint,
            secure=secure,
            region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION,
            access_key=credentials.get("AWS_ACCESS_KEY_ID"),
            secret_key=credentials.get("AWS_SECRET_ACCESS_KEY"),
            session_token=credentials.get("AWS_SESSION_TOKEN"),
            ca_bundle=os.environ.get("AWS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE") or None,
        )


def _parse_endpoint(url: str) -> tuple[str, bool]:
    """``https://minio.storage:9000`` → ("minio.storage:9000", True); the scheme decides TLS."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise StorageMisconfigured(
            f"the S3 endpoint {parts.scheme}://{parts.hostname}{parts.path} (AWS_ENDPOINT_URL_S3 or "
            "AWS_ENDPOINT_URL) must be http(s)://host[:port] with no path"
        )
    return parts.netloc.rsplit("@", 1)[-1], parts.scheme == "https"


@functools.cache
def _client(config: S3Config) -> Minio:
    """One client (and one connection pool) per configuration, so per process in practice."""
    pool = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S),
        retries=False,  # our retry layer is the only one: see _retry
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        ca_certs=config.ca_bundle or certifi.where(),
    )
    return Minio(
        config.endpoint,
        access_key=config.access_key,
        secret_key=config.secret_key,
        session_token=config.session_token,
        secure=config.secure,
        region=config.region,
        http_client=pool,
    )


def client_from_env() -> Minio:
    """The process's client for the store the environment names."""
    return _client(S3Config.from_env())


def retry_seconds() -> float:
    """The total time transient faults are retried before giving up (env-tunable for tests)."""
    return env.number(RETRY_SECONDS_ENV, DEFAULT_RETRY_SECONDS, inclusive=True)


def part_size() -> int:
    """Multipart part size: bigger parts mean fewer requests but more memory per upload thread."""
    return int(env.number(PART_SIZE_ENV, DEFAULT_PART_SIZE, int, minimum=MIN_PART_SIZE, inclusive=True))


# ---------------------------------------------------------------------------- URIs
def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` → ("bucket", "some/key"); the key may be empty (a bucket root).

    Split by hand rather than with urlsplit: keys may hold ``?`` and ``#``.
    """
    if not uri.startswith("s3://"):
        raise InvalidSpec(f"{uri!r} is not an s3://bucket/key URI")
    bucket, _, key = uri[len("s3://") :].partition("/")
    try:
        check_bucket_name(bucket, strict=True)
    except ValueError:
        raise InvalidSpec(f"{uri!r} does not name a valid bucket: give s3://bucket/key") from None
    return bucket, key


def _object_key(uri: str) -> tuple[str, str]:
    bucket, key = parse_s3_uri(uri)
    if not key or key.endswith("/"):
        raise InvalidSpec(f"{uri!r} names no object: give s3://bucket/key")
    return bucket, key


# ---------------------------------------------------------------------------- retries
class ObjectNotFound(InputNotFound):
    """The key is absent (as opposed to the bucket): for the output store, an ordinary answer.

    A HEAD cannot tell the two apart (its 404 has no body), so there a missing bucket reads as a
    missing key; the next write then names the bucket.
    """


def _permanent(exc: Exception, uri: str) -> LipSyncError | None:
    """The error to raise at once for a fault retrying cannot fix, or None if it is transient."""
    if isinstance(exc, S3Error):
        bucket = parse_s3_uri(uri)[0]
        if exc.code in _DENIED_CODES:
            return AccessDenied(
                f"the store refused access to bucket {bucket!r} ({exc.code}); check the credentials "
                "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and the bucket policy"
            )
        if exc.code == "NoSuchBucket":
            return InputNotFound(f"{uri}: bucket {bucket!r} does not exist")
        if exc.code == "NoSuchKey":
            return ObjectNotFound(f"{uri} does not exist")
        status = exc.response.status if exc.response is not None else 0
        if exc.code in _TRANSIENT_CODES or status >= 500 or status in (408, 429):
            return None
        return StorageMisconfigured(f"{uri}: the store refused the request ({exc.code}: {exc.message})")
    if isinstance(exc, ServerError) and exc.status_code < 500:
        return StorageMisconfigured(f"{uri}: the store answered HTTP {exc.status_code}")
    if isinstance(exc, urllib3.exceptions.SSLError) and any(
        isinstance(a, ssl.SSLCertVerificationError) for a in exc.args
    ):
        return StorageMisconfigured(
            f"{uri}: the store's TLS certificate is not trusted ({exc.args[0]}); if it is signed by a "
            "private CA, point AWS_CA_BUNDLE at that CA's certificate"
        )
    return None


def _describe(exc: Exception) -> str:
    if isinstance(exc, S3Error):
        return f"{exc.code}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def _retry(uri: str, op: Callable[[], T], budget: float | None = None) -> T:
    """Run ``op``, retrying transient faults with exponential backoff and full jitter.

    Full jitter (a uniform draw up to the exponential ceiling) keeps many runners hitting a
    recovering MinIO from retrying in lockstep. The bound is on total time, not attempts, because
    what matters to a waiting render is how long it waits: the last attempt starts at the bound
    and may overrun it by its own timeout. Each call of ``_retry`` (one step: an upload, a copy,
    a download) has its own bound, which is how long one outage is tolerated: ``budget`` seconds,
    by default ``LIPSYNC_S3_RETRY_SECONDS``.
    """
    budget = retry_seconds() if budget is None else budget
    start = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            return op()
        except (MinioException, *_TRANSPORT_ERRORS) as exc:
            if (error := _permanent(exc, uri)) is not None:
                raise error from exc
            elapsed = time.monotonic() - start
            if elapsed >= budget:
                raise StorageUnavailable(
                    f"{uri}: the store did not answer after {attempt} attempts in {elapsed:.0f} s "
                    f"(last: {_describe(exc)})"
                ) from exc
            # The last wait is cut short so that one more attempt lands on the bound.
            ceiling = min(_BACKOFF_CAP_S, _BACKOFF_FIRST_S * 2 ** (attempt - 1))
            delay = min(random.uniform(0.0, ceiling), budget - elapsed)
            log.warning("%s: %s; retry %d in %.1f s", uri, _describe(exc), attempt, delay)
        time.sleep(delay)


# ---------------------------------------------------------------------------- downloads
@dataclass(frozen=True)
class _Fetched:
    sha256: str
    etag: str


def _stream_to(client: Minio, bucket: str, key: str, uri: str, out: Path, max_bytes: int | None,
               deadline: Deadline, limit_name: str) -> _Fetched:
    """One attempt: the whole object into ``out`` (truncated first), hashed on the way."""
    deadline.check(uri)
    response = client.get_object(bucket, key)
    try:
        length = int(response.headers.get("content-length", "0"))
        if max_bytes is not None and length > max_bytes:
            raise InputTooLarge(f"{uri} is {length} bytes, over the limit of {max_bytes} bytes ({limit_name})")
        digest = hashlib.sha256()
        size = 0
        with out.open("wb") as f:
            # read1: what has arrived, so a server dripping bytes cannot outlast the deadline.
            while chunk := response.read1(_CHUNK):
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise InputTooLarge(f"{uri} is over the limit of {max_bytes} bytes ({limit_name})")
                digest.update(chunk)
                f.write(chunk)
                deadline.check(uri, size)
        return _Fetched(digest.hexdigest(), response.headers.get("etag", "").strip('"'))
    finally:
        response.close()
        response.release_conn()


def _fetch(uri: str, dest: Path, max_bytes: int | None, deadline: Deadline | None = None,
           limit_name: str = limits.MAX_INPUT_ENV) -> _Fetched:
    """The object at ``uri`` into ``dest``, which appears only once complete.

    A retry starts the object over: inputs are minutes of video, not worth the bookkeeping of
    resuming ranges. One deadline covers every attempt (``lipsync.io.limits``).
    """
    bucket, key = _object_key(uri)
    client = client_from_env()
    deadline = deadline or Deadline()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    part = Path(name)
    try:
        fetched = _retry(uri, lambda: _stream_to(client, bucket, key, uri, part, max_bytes, deadline, limit_name))
        os.replace(part, dest)
        return fetched
    finally:
        part.unlink(missing_ok=True)


def download(uri: str, dest: Path, *, max_bytes: int | None = None, limit_name: str = limits.MAX_INPUT_ENV) -> str:
    """Stream ``uri`` to ``dest``; return the sha256 hex of its bytes (for metrics.json)."""
    return _fetch(uri, Path(dest), max_bytes, limit_name=limit_name).sha256


_fetch_locks: dict[str, threading.Lock] = {}
_fetch_locks_guard = threading.Lock()


def _lock_for(uri: str) -> threading.Lock:
    """One lock per URI, so two jobs in one process wanting the same weights fetch them once."""
    with _fetch_locks_guard:
        return _fetch_locks.setdefault(uri, threading.Lock())


def _cache_path(cache_dir: Path, uri: str, etag: str) -> Path:
    """Where ``uri`` at version ``etag`` lives in the cache: a new upload gets a new path."""
    tag = hashlib.sha256(f"{uri}\n{etag}".encode()).hexdigest()[:24]
    return cache_dir / tag / PurePosixPath(uri).name


def download_cached(uri: str, cache_dir: Path) -> Path:
    """Model weights: fetched once per ETag, then served from ``cache_dir``.

    Each call asks the store for the current ETag (one HEAD), so replaced weights are noticed;
    the file itself is fetched only when that ETag is not cached yet. The cache entry is named by
    the ETag the GET actually returned, so an upload racing the fetch cannot mislabel it.
    """
    cache_dir = Path(cache_dir)
    bucket, key = _object_key(uri)
    client = client_from_env()
    with _lock_for(uri):
        etag = _retry(uri, lambda: client.stat_object(bucket, key)).etag or ""
        cached = _cache_path(cache_dir, uri, etag)
        if cached.is_file():
            return cached
        incoming = cache_dir / ".incoming" / secrets.token_hex(8)
        fetched = _fetch(uri, incoming, limits.max_weights_bytes(), limit_name=limits.MAX_WEIGHTS_ENV)
        target = _cache_path(cache_dir, uri, fetched.etag)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(incoming, target)
        log.info("fetched %s (etag %s) into the weights cache", uri, fetched.etag)
        return target


def _relative_key(prefix: str, key: str, uri_prefix: str) -> PurePosixPath:
    """A listed key relative to the prefix, refused if it could climb out of the destination."""
    rel = PurePosixPath(key[len(prefix) :])
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise InvalidWeights(f"{uri_prefix}: refusing the key {key!r}, which leaves the destination folder")
    return rel


def download_prefix(uri_prefix: str, dest_dir: Path) -> Path:
    """Every object under ``uri_prefix`` into ``dest_dir``, keeping the layout (checkpoint folders).

    ``dest_dir/.etags.json`` remembers which ETag each file came from, so a second call (another
    job in this process, or a reused volume) only fetches what changed.
    """
    dest_dir = Path(dest_dir)
    bucket, prefix = parse_s3_uri(uri_prefix)
    prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
    client = client_from_env()
    listing = _retry(uri_prefix, lambda: list(client.list_objects(bucket, prefix=prefix, recursive=True)))
    objects = [o for o in listing if not o.is_dir and not o.object_name.endswith("/")]
    if not objects:
        raise InputNotFound(f"{uri_prefix}: no objects under this prefix")
    total, budget = sum(o.size or 0 for o in objects), limits.max_weights_bytes()
    if total > budget:  # the whole prefix counts, not each file: it all lands on one scratch volume
        raise InputTooLarge(f"{uri_prefix}: its {len(objects)} objects hold {total} bytes, over the limit of "
                            f"{budget} bytes ({limits.MAX_WEIGHTS_ENV})")
    deadline = Deadline()  # one for the whole prefix
    manifest_path = dest_dir / ".etags.json"
    with _lock_for(uri_prefix):
        manifest: dict[str, str] = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        for obj in objects:
            rel = str(_relative_key(prefix, obj.object_name, uri_prefix))
            if manifest.get(rel) == obj.etag and (dest_dir / rel).is_file():
                continue
            manifest[rel] = _fetch(f"s3://{bucket}/{obj.object_name}", dest_dir / rel, budget, deadline,
                                   limits.MAX_WEIGHTS_ENV).etag
            _write_atomically(manifest_path, json.dumps(manifest, indent=1, sort_keys=True))
    return dest_dir


def _write_atomically(path: Path, text: str) -> None:
    """A runner killed mid-write must not leave a manifest that the next one cannot parse."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- the output store
def _check_metadata(metadata: dict[str, str]) -> None:
    """S3 lower-cases user metadata keys and sends values as ASCII headers; refuse anything that
    would not read back equal, rather than find out from a mangled metrics check later."""
    for k, v in metadata.items():
        if not k or k != k.lower() or not all(c.isalnum() or c == "-" for c in k) or not k.isascii():
            raise ValueError(f"metadata key {k!r}: use lower-case letters, digits and '-'")
        if not v.isascii() or not v.isprintable():
            raise ValueError(f"metadata {k!r}: the value must be printable ASCII")


class S3Store:
    """Artifacts under an ``s3://bucket/prefix``, published atomically (see :meth:`put`)."""

    def __init__(self, uri: str, *, retry_seconds: float | None = None) -> None:
        self.bucket, prefix = parse_s3_uri(uri)
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self._client = client_from_env()
        self._bucket_seen = False
        self._budget = retry_seconds  # None: LIPSYNC_S3_RETRY_SECONDS; a cache that only saves work waits less

    def _retry(self, uri: str, op: Callable[[], T]) -> T:
        return _retry(uri, op, self._budget)

    def _key(self, name: str) -> str:
        rel = PurePosixPath(name)
        if not name or rel.is_absolute() or ".." in rel.parts or rel.parts[0] == _TMP_DIR:
            raise ValueError(f"artifact name {name!r} must be a relative path inside the output")
        return self._join(name)

    def _join(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def get(self, name: str) -> bytes | None:
        """An artifact's bytes (small ones: metrics.json), or None if absent."""
        key = self._key(name)
        try:
            return self._retry(self._uri(key), lambda: self._read(key))
        except ObjectNotFound:
            return None

    def _read(self, key: str) -> bytes:
        response = self._client.get_object(self.bucket, key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def head(self, name: str) -> dict[str, str] | None:
        """An artifact's user metadata (keys lower-case, as S3 keeps them), or None if absent."""
        key = self._key(name)
        uri = self._uri(key)
        try:
            stat = self._retry(uri, lambda: self._client.stat_object(self.bucket, key))
        except ObjectNotFound:
            self._require_bucket()
            return None
        meta = "x-amz-meta-"
        return {
            k.lower()[len(meta) :]: v for k, v in (stat.metadata or {}).items() if k.lower().startswith(meta)
        }

    def _require_bucket(self) -> None:
        """A HEAD's 404 does not say whether the key or the bucket is missing. "Not rendered yet"
        must not be the answer for a bucket that does not exist, or the render would run for an
        hour and then fail to publish."""
        if not self._bucket_seen:
            if not self._retry(self.uri, lambda: self._client.bucket_exists(self.bucket)):
                raise InputNotFound(f"{self.uri}: bucket {self.bucket!r} does not exist")
            self._bucket_seen = True

    def put(self, name: str, src: Path, *, content_type: str, metadata: dict[str, str]) -> str:
        """Publish ``src`` as ``name``; return its URI. The final key holds the whole file or nothing.

        The bytes go to a temporary key first (multipart when large; a lost connection restarts
        that upload), then one server-side copy writes the final key with its content type and
        metadata, then the temporary key is deleted. S3 has no rename; the temporary key is what
        keeps every slow, failure-prone step (the upload, its retries, an upload abandoned by a
        killed pod) away from the final key, which only ever receives a complete object in a
        single request. Stale temporary keys (a pod killed between upload and delete) are under
        ``<prefix>/.tmp/``, for a bucket lifecycle rule to expire.
        """
        _check_metadata(metadata)
        key = self._key(name)
        tmp = self._join(f"{_TMP_DIR}/{name}.{secrets.token_hex(6)}")
        uri = self._uri(key)
        # Never more parts than S3 allows, whatever the configured size.
        chunk = max(part_size(), -(-Path(src).stat().st_size // MAX_MULTIPART_COUNT))
        try:
            self._retry(
                uri,
                lambda: self._client.fput_object(
                    self.bucket,
                    tmp,
                    str(src),
                    content_type=content_type,
                    part_size=chunk,
                ),
            )
            self._retry(
                uri,
                lambda: self._client.compose_object(
                    self.bucket,
                    key,
                    [ComposeSource(self.bucket, tmp)],
                    metadata={"Content-Type": content_type, **metadata},
                ),
            )
        except BaseException:
            self._discard(tmp, patient=False)
            raise
        self._discard(tmp, patient=True)
        return uri

    def fetch(self, name: str, dest: Path) -> Path | None:
        """Download ``name`` to ``dest`` (retried); None if absent."""
        key = self._key(name)
        try:
            self._retry(self._uri(key), lambda: self._client.fget_object(self.bucket, key, str(dest)))
        except ObjectNotFound:
            return None
        return dest

    def delete(self, name: str) -> None:
        key = self._key(name)
        self._retry(self._uri(key), lambda: self._client.remove_object(self.bucket, key))

    def _discard(self, tmp: str, *, patient: bool) -> None:
        """Delete a temporary key. After a failure one attempt is enough (the store is likely down
        and the error matters more); after success it is retried, but never fails the publish."""
        uri = self._uri(tmp)
        try:
            if patient:
                self._retry(uri, lambda: self._client.remove_object(self.bucket, tmp))
            else:
                self._client.remove_object(self.bucket, tmp)
        except (LipSyncError, MinioException, *_TRANSPORT_ERRORS) as e:
            log.warning("could not delete the temporary object %s: %s", uri, _describe(e))
