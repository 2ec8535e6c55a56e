"""A moto S3 server in a child process, for tests that need a real socket to break.

A subprocess rather than moto's in-process decorators so that the code under test talks to a
real HTTP endpoint with the real ``minio`` client, and so the server can be *killed* (SIGKILL, in
the middle of a request) and started again on the same port.

Usage, from any test module ::

    from . import s3server

    @pytest.fixture
    def s3_server(tmp_path, monkeypatch):  # bucket "lipsync", the environment pointing at it
        yield from s3server.running(tmp_path, monkeypatch)

    def test_job_on_s3(s3_server, tmp_path):
        s3_server.requests()  # what the server answered, e.g. to count GETs
        ...

or, for other buckets, moto's auth checks or https, ``with S3Server(tmp_path, ...) as server``
plus ``monkeypatch.setenv`` of each item of ``s3_env(server)``. The runner in a subprocess (the
CLI) inherits that environment.

moto keeps its state in memory, so a restart loses every object and upload. The buckets named
here are created inside the child *before* it starts listening, so a client retrying against a
restarting server never sees a window where the port answers but the bucket is missing.

``python tests/s3server.py PORT [--bucket NAME ...] [--auth] [--tls CERT KEY]`` is the child's
entry point.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

BUCKET = "lipsync"
ACCESS_KEY = "lipsync-test"
SECRET_KEY = "lipsync-test-secret"
_REQUEST_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3})')
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # werkzeug colours the lines of 3xx-5xx answers


@dataclass(frozen=True)
class Request:
    """One request as the server logged it (after answering it)."""

    method: str
    path: str  # with the query string, e.g. /bucket/key?partNumber=1&uploadId=...
    status: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class S3Server:
    """moto's S3 server on 127.0.0.1, with its request log, that can be killed and restarted.

    ``auth=True`` turns on moto's IAM checks from the first request; no IAM user exists, so every
    request is refused as from an unknown access key (for the wrong-credentials case).
    ``tls=True`` serves https with a self-signed certificate for 127.0.0.1, written to
    ``ca_path`` (what a cluster's private CA bundle would be).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        buckets: list[str] | tuple[str, ...] = ("lipsync",),
        auth: bool = False,
        tls: bool = False,
    ) -> None:
        self.buckets = list(buckets)
        self.auth = auth
        self.port = free_port()
        self.endpoint = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.log_path = Path(workdir) / f"moto-{self.port}.log"
        self.ca_path = Path(workdir) / f"moto-{self.port}.crt" if tls else None
        if self.ca_path is not None:
            _self_signed(self.ca_path, self.ca_path.with_suffix(".key"))
        self._proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 60.0) -> None:
        """Start the child and wait until it accepts connections (its buckets already exist)."""
        cmd = [sys.executable, __file__, str(self.port), *(a for b in self.buckets for a in ("--bucket", b))]
        if self.auth:
            cmd.append("--auth")
        if self.ca_path is not None:
            cmd += ["--tls", str(self.ca_path), str(self.ca_path.with_suffix(".key"))]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto exited with {self._proc.returncode}; see {self.log_path}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"moto did not listen on port {self.port} within {timeout} s; see {self.log_path}")

    def kill(self) -> None:
        """SIGKILL: connections in flight are cut, nothing is flushed, all state is lost."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(timeout=10)
        self._proc = None

    def restart(self, down_for: float = 0.0) -> None:
        self.kill()
        time.sleep(down_for)
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()

    # ------------------------------------------------------------------ observation
    def requests(self) -> list[Request]:
        """Every request answered so far, across restarts, in order."""
        if not self.log_path.exists():
            return []
        text = _ANSI.sub("", self.log_path.read_text(errors="replace"))
        found = (_REQUEST_LINE.search(line) for line in text.splitlines())
        return [Request(m["method"], m["path"], int(m["status"])) for m in found if m]

    def incarnations(self) -> list[list[Request]]:
        """The requests each run of the server answered, one list per start."""
        runs: list[list[Request]] = []
        for line in _ANSI.sub("", self.log_path.read_text(errors="replace")).splitlines():
            if "Running on http" in line:
                runs.append([])
            elif (m := _REQUEST_LINE.search(line)) and runs:
                runs[-1].append(Request(m["method"], m["path"], int(m["status"])))
        return runs

    def wait_for(self, match: Callable[[Request], bool], timeout: float = 30.0) -> Request:
        """Block until a request matching ``match`` has been answered (polls the log)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for r in self.requests():
                if match(r):
                    return r
            time.sleep(0.005)
        raise TimeoutError(f"no matching request within {timeout} s")

    def kill_when(
        self, match: Callable[[Request], bool], *, down_for: float | None = None
    ) -> threading.Thread:
        """In the background: once a request matches, kill the server, and after ``down_for``
        seconds start it again (``None``: it stays down)."""

        def run() -> None:
            self.wait_for(match)
            if down_for is None:
                self.kill()
            else:
                self.restart(down_for=down_for)

        thread = threading.Thread(target=run, name="moto-restarter", daemon=True)
        thread.start()
        return thread


class FlakyProxy:
    """A TCP proxy in front of the server that can reset one connection mid-transfer.

    A network blip rather than a dead server: the server keeps its state, so a retry can find the
    object (a download) or the bucket's other uploads (an upload) as they were.
    """

    def __init__(self, upstream_port: int) -> None:
        self._upstream = ("127.0.0.1", upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._armed: tuple[str, int] | None = None
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.cuts = 0
        threading.Thread(target=self._accept, name="flaky-proxy", daemon=True).start()

    def cut_after(self, nbytes: int, *, direction: str) -> None:
        """Reset the first connection that carries more than ``nbytes`` ``"up"`` (to the server)
        or ``"down"`` (to the client) from now on; later connections pass untouched."""
        with self._lock:
            self._armed = (direction, nbytes)

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for sock in self._open:
                sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(self._upstream)
            with self._lock:
                self._open |= {client, upstream}
            for src, dst, direction in ((client, upstream, "up"), (upstream, client, "down")):
                threading.Thread(target=self._pump, args=(src, dst, direction, client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str, client: socket.socket) -> None:
        carried = 0
        try:
            while data := src.recv(65536):
                carried += len(data)
                if self._should_cut(direction, carried):
                    # SO_LINGER 0: the client gets a RST, as from a dropped NAT entry or a dead peer.
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    break
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            # shutdown, not just close: it wakes the other pump, blocked in recv on the same socket.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _should_cut(self, direction: str, carried: int) -> bool:
        with self._lock:
            if self._armed is None or self._armed[0] != direction or carried <= self._armed[1]:
                return False
            self._armed = None
            self.cuts += 1
            return True


def s3_env(server: S3Server) -> dict[str, str]:
    """The environment the runner reads to reach ``server`` (set it with monkeypatch.setenv): a
    short retry bound, so a test of an outage takes seconds, and S3's smallest part size, so
    files from 5 MiB up are uploaded in parts."""
    return {
        "AWS_ENDPOINT_URL_S3": server.endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": "us-east-1",
        "LIPSYNC_S3_RETRY_SECONDS": "5",
        "LIPSYNC_S3_PART_SIZE": str(5 * 1024 * 1024),
    }


def running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """The body of an ``s3_server`` fixture: a fresh server holding the empty bucket ``lipsync``,
    and the environment pointing at it. (A plain generator, not a fixture, so that test modules
    can wrap it without plugin registration or import-shadowing tricks.)"""
    with S3Server(tmp_path, buckets=[BUCKET]) as server:
        for name, value in s3_env(server).items():
            monkeypatch.setenv(name, value)
        yield server


def _self_signed(cert_path: Path, key_path: Path) -> None:
    """A one-day certificate for 127.0.0.1, its own CA (cryptography comes with moto)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


# ---------------------------------------------------------------------- the child process
def _serve(port: int, buckets: list[str], auth: bool, tls: list[str] | None) -> None:
    if auth:
        os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"  # read by moto.settings at import
    from moto.backends import get_backend
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.server import main

    s3 = get_backend("s3")[DEFAULT_ACCOUNT_ID]["aws"]
    for bucket in buckets:
        s3.create_bucket(bucket, "us-east-1")
    main(["-H", "127.0.0.1", "-p", str(port), *(["-c", tls[0], "-k", tls[1]] if tls else [])])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--bucket", action="append", default=[])
    parser.add_argument("--auth", action="store_true")
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    args = parser.parse_args()
    _serve(args.port, args.bucket, args.auth, args.tls)
