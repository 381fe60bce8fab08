"""A real S3-compatible server for tests: moto's server mode on 127.0.0.1.

:class:`S3Server` runs ``moto_server`` (from ``moto[server]``) as a subprocess on
a free port; it speaks the S3 HTTP protocol, multipart uploads and conditional
writes included, and keeps everything in memory (a restart starts empty).
Import the fixtures into a ``conftest.py`` or a test module::

    from coral_core.testing.s3_server import s3_config, s3_server  # noqa: F401

    def test_round_trip(s3_config):
        store = S3Store(s3_config)  # a fresh bucket for this test

Tests using them are skipped when boto3 or moto is not installed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from coral_core.store.base import WeightStore
from coral_core.store.s3 import S3Config

#: The credentials and region every client of the test server uses (moto accepts any).
ACCESS_KEY = "coral-testing"
SECRET_KEY = "coral-testing-secret"
REGION = "us-east-1"
START_TIMEOUT = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def missing_packages() -> list[str]:
    """The packages the server and its clients need that are not installed."""
    return [name for name in ("boto3", "moto", "flask") if importlib.util.find_spec(name) is None]


class S3Server:
    """``moto_server`` on 127.0.0.1; start, stop (as a crash would) and restart it.

    Args:
        port: the port to listen on; a free one when None. It stays the same
            across :meth:`restart`, so clients keep their endpoint.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._client: Any = None
        self._log = Path(tempfile.mkdtemp(prefix="coral-moto-")) / "server.log"

    def start(self) -> None:
        """Start the server and wait until it answers.

        Raises:
            RuntimeError: when it exits or does not answer within ``START_TIMEOUT``.
        """
        with open(self._log, "ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            with contextlib.suppress(OSError), urllib.request.urlopen(self.endpoint_url, timeout=1):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"moto_server on port {self.port} did not start; its log:\n{self._log.read_text()}"
        )

    def stop(self) -> None:
        """Kill the server at once (no graceful shutdown: what a crash looks like)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def restart(self) -> None:
        """Stop and start again on the same port; the new server is empty."""
        self.stop()
        self.start()

    def client(self) -> Any:
        """A boto3 S3 client of this server (one, made on first use)."""
        if self._client is None:
            import boto3  # type: ignore[import-untyped]

            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint_url,
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY,
                region_name=REGION,
            )
        return self._client

    def config(self, bucket: str, **settings: Any) -> S3Config:
        """An :class:`S3Config` for ``bucket`` on this server (``settings`` override)."""
        fields: dict[str, Any] = {
            "bucket": bucket,
            "endpoint_url": self.endpoint_url,
            "access_key": ACCESS_KEY,
            "secret_key": SECRET_KEY,
            "region": REGION,
            **settings,
        }
        return S3Config(**fields)

    def make_bucket(self, **settings: Any) -> S3Config:
        """Create a new, uniquely named bucket; return its config (``settings`` override)."""
        bucket = f"coral-test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=bucket)
        return self.config(bucket, **settings)

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def count_requests(store: WeightStore, counts: Counter[str]) -> None:
    """Count every HTTP request ``store`` (an S3 store; others send none) sends
    from now on into ``counts``, by ``"METHOD area"``: ``objects`` for a
    remote's objects and packs, ``refs+locks`` for the rest. botocore's own
    events, so retries and the parts of an upload count too."""
    client = getattr(store, "_client", None)
    if client is None:
        return

    def hook(request: Any, **_: Any) -> None:
        url = urllib.parse.unquote(request.url)
        where = url if "list-type" in url else url.split("?")[0]  # a listing: its prefix
        counts[f"{request.method} {'objects' if '/objects' in where else 'refs+locks'}"] += 1

    client.meta.events.register("before-send.s3", hook)


def skip_without_s3() -> None:
    """Skip the calling test when boto3 or moto[server] is not installed."""
    missing = missing_packages()
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (pip install boto3 'moto[server]')")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One moto server for the whole test session, torn down at its end."""
    skip_without_s3()
    with S3Server() as server:
        yield server


@pytest.fixture
def s3_config(s3_server: S3Server) -> S3Config:
    """The config of a fresh, empty bucket on the session's server."""
    return s3_server.make_bucket()
