"""S3Store against a real S3 server (moto's server mode on 127.0.0.1)."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coral_core import MemoryStore, MissingObjectError, Repository, WeightStore
from coral_core.store import LocalStore, S3Config, S3Store
from coral_core.store.s3 import S3StoreError
from coral_core.testing.s3_server import (  # noqa: F401 (fixtures)
    S3Server,
    free_port,
    s3_config,
    s3_server,
    skip_without_s3,
)
from coral_core.testing.store_tests import StoreTests

from .conftest import make_weights

MB = 2**20


class TestS3Store(StoreTests):
    """S3Store keeps the shared store contract, under a prefix in a fresh bucket."""

    @pytest.fixture(autouse=True)
    def _server(self, s3_server: S3Server) -> None:  # noqa: F811
        self.server = s3_server
        self.buckets: dict[Path, S3Config] = {}

    def _config(self, tmp_path: Path) -> S3Config:
        if tmp_path not in self.buckets:  # the read-only store sees the same bucket
            self.buckets[tmp_path] = self.server.make_bucket(prefix="coral/test-repo")
        return self.buckets[tmp_path]

    def make_store(self, tmp_path: Path) -> WeightStore:
        return S3Store(self._config(tmp_path))

    def make_read_only_store(self, tmp_path: Path) -> WeightStore | None:
        return S3Store(self._config(tmp_path), read_only=True)


def test_objects_live_under_the_prefix(s3_server: S3Server) -> None:  # noqa: F811
    config = s3_server.make_bucket(prefix="/team/project/")
    store = S3Store(config)
    at_root = S3Store(dataclasses.replace(config, prefix=""))
    other = S3Store(dataclasses.replace(config, prefix="team/other"))
    store.put("ab/cdef", b"v")
    assert set(at_root.list()) == {"team/project/ab/cdef"}
    assert at_root.get("team/project/ab/cdef") == b"v"
    assert list(other.list()) == []
    assert not other.has("ab/cdef")
    s3_server.client().put_object(Bucket=config.bucket, Key="team/project/.hidden", Body=b"x")
    assert list(store.list()) == ["ab/cdef"]  # foreign names that are not keys are left out
    assert repr(store) == f"S3Store('s3://{config.bucket}/team/project' at {config.endpoint_url})"


def test_a_repository_commits_and_checks_out_on_s3(
    tmp_path: Path,
    s3_config: S3Config,  # noqa: F811
) -> None:
    repo = Repository(tmp_path / "repo", init=True, chunk_size=4096, store=S3Store(s3_config))
    first, second = make_weights(seed=1), make_weights(seed=2)
    one = repo.commit("first", weights=first)
    repo.create_branch("other")
    repo.checkout("other")
    repo.commit("second", weights=second)
    repo.checkout("main")
    reopened = Repository(tmp_path / "repo", store=S3Store(s3_config))
    for commit, weights in [(one.commit_hash, first), ("other", second)]:
        restored = reopened.get_all_weights(commit)
        assert set(restored) == set(weights)
        for name, weight in weights.items():
            assert restored[name].data.tobytes() == weight.data.tobytes()
            assert restored[name].dtype == weight.dtype
    assert reopened.verify().ok


def test_a_big_object_goes_up_in_parts(s3_server: S3Server) -> None:  # noqa: F811
    config = s3_server.make_bucket(part_size=5 * MB, multipart_threshold=8 * MB)
    store = S3Store(config)
    big = np.random.default_rng(1).integers(0, 256, 21 * MB + 123, dtype=np.uint8)
    store.put("big/x", big.data)
    head = s3_server.client().head_object(Bucket=config.bucket, Key="big/x")
    assert head["ETag"].strip('"').endswith("-4")  # 5 + 5 + 5 + 6 MiB: the remainder joins the last
    assert store.size("big/x") == big.nbytes
    assert store.get("big/x") == big.tobytes()
    assert (
        store.get("big/x", byte_range=(20 * MB, 20 * MB + 9))
        == big[20 * MB : 20 * MB + 9].tobytes()
    )
    assert store.put_if_absent("big/x", b"not this") is False  # conditional multipart too
    assert store.put_if_absent("big/y", big[::2].data) is True
    assert store.get("big/y") == big[::2].tobytes()
    assert s3_server.client().list_multipart_uploads(Bucket=config.bucket).get("Uploads") is None


def test_a_thousand_small_objects_sync_both_ways(
    tmp_path: Path,
    s3_config: S3Config,  # noqa: F811
) -> None:
    local = MemoryStore()
    for i in range(1000):
        local.put(f"{i % 256:02x}/object-{i}", b"%d" % i * (i % 7))
    store = S3Store(s3_config)
    started = time.monotonic()
    sent = store.sync_from_local(local)
    elapsed = time.monotonic() - started
    total = sum(local.size(key) for key in local.list())
    assert sent == {"uploaded": 1000, "skipped": 0, "bytes_transferred": total}
    assert store.sync_from_local(local) == {"uploaded": 0, "skipped": 1000, "bytes_transferred": 0}
    local.put("00/object-0", b"changed size")
    assert store.sync_from_local(local)["uploaded"] == 1
    copy = LocalStore(tmp_path / "copy", fsync=False)
    received = store.sync_to_local(copy)
    assert received["downloaded"] == 1000
    assert received["bytes_transferred"] == sum(local.size(key) for key in local.list())
    assert sorted(copy.list()) == sorted(local.list())
    assert all(copy.get(key) == local.get(key) for key in local.list())
    assert store.sync_to_local(copy)["skipped"] == 1000
    assert elapsed < 30, f"1000 uploads took {elapsed:.1f} s"


@pytest.mark.parametrize("expected", [None, b"old"], ids=["create", "replace"])
def test_a_swap_whose_answer_was_lost_still_counts(
    s3_config: S3Config,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    expected: bytes | None,
) -> None:
    """The first attempt landed, its answer was lost, the retry was refused (412)."""
    store = S3Store(s3_config)
    if expected is not None:
        store.put("refs/heads/main", expected)
    real_put = store._client.put_object

    def landed_then_refused(**kwargs: Any) -> Any:
        real_put(**kwargs)
        response = {
            "Error": {
                "Code": "PreconditionFailed",
                "Message": "At least one of the pre-conditions",
            },
            "ResponseMetadata": {"HTTPStatusCode": 412, "RetryAttempts": 1},
        }
        raise store._exceptions.ClientError(response, "PutObject")

    monkeypatch.setattr(store._client, "put_object", landed_then_refused)
    assert store.compare_and_swap("refs/heads/main", expected, b"new") is True
    assert store.compare_and_swap("refs/heads/main", expected, b"other") is False
    assert store.get("refs/heads/main") == b"new"


def test_errors_name_the_bucket(s3_server: S3Server) -> None:  # noqa: F811
    missing = S3Store(s3_server.config("coral-no-such-bucket"))
    for action in (
        lambda: missing.get("ab/x"),
        lambda: missing.put("ab/x", b"1"),
        lambda: list(missing.list()),
    ):
        with pytest.raises(S3StoreError, match="bucket 'coral-no-such-bucket' does not exist"):
            action()
    present = S3Store(s3_server.make_bucket())
    with pytest.raises(MissingObjectError, match="'ab/none' is not in s3://"):
        present.get("ab/none")
    with pytest.raises(MissingObjectError):
        present.size("ab/none")


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("AccessDenied", "access to S3 bucket 'b' at http.* was denied .AccessDenied"),
        ("InvalidAccessKeyId", "denied .InvalidAccessKeyId.*check the credentials"),
        ("InternalError", r"s3://b/ab/x failed: InternalError"),
    ],
)
def test_refusals_become_coral_errors(
    s3_server: S3Server,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    code: str,
    message: str,
) -> None:
    store = S3Store(s3_server.config("b"))

    def refuse(**kwargs: Any) -> Any:
        response = {"Error": {"Code": code, "Message": "no"}, "ResponseMetadata": {}}
        raise store._exceptions.ClientError(response, "GetObject")

    monkeypatch.setattr(store._client, "get_object", refuse)
    with pytest.raises(S3StoreError, match=message):
        store.get("ab/x")


def test_credentials_come_from_the_aws_chain_when_not_given(
    tmp_path: Path,
    s3_server: S3Server,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = s3_server.make_bucket(access_key=None, secret_key=None)
    for name in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-the-environment")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    S3Store(config).put("ab/x", b"1")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(S3StoreError, match="no AWS credentials for S3 bucket"):
        S3Store(config).get("ab/x")


def test_an_unreachable_server_is_a_clear_error() -> None:
    skip_without_s3()
    config = S3Config(
        bucket="anything",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        access_key="a",
        secret_key="b",
        region="us-east-1",
        max_attempts=2,
        connect_timeout=1,
    )
    with pytest.raises(S3StoreError, match=r"s3://anything/ab/x failed after 2 attempts at http"):
        S3Store(config).put("ab/x", b"1")


def test_boto3_is_imported_only_by_the_s3_store() -> None:
    import subprocess
    import sys

    code = (
        "import sys, coral_core, coral_core.store; "
        "assert 'boto3' not in sys.modules and 'h5py' not in sys.modules; "
        "from coral_core.store import S3Config; S3Config(bucket='b'); "
        "assert 'boto3' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


class _KillingStore(MemoryStore):
    """A local store that kills the server after ``after`` of its objects were read."""

    def __init__(self, server: S3Server, after: int) -> None:
        super().__init__()
        self.server, self.after, self.reads = server, after, 0
        self._reads_lock = threading.Lock()

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        with self._reads_lock:
            self.reads += 1
            if self.reads == self.after:
                self.server.stop()
        return super().get(key, byte_range)


def _restart_with_bucket(server: S3Server, config: S3Config) -> None:
    server.restart()  # an empty server on the same endpoint
    server.client().create_bucket(Bucket=config.bucket)


def test_killing_the_server_mid_sync_then_running_again(tmp_path: Path) -> None:
    skip_without_s3()
    with S3Server() as server:
        config = server.make_bucket(max_attempts=2, connect_timeout=1, max_concurrency=4)
        local = _KillingStore(server, after=60)
        for i in range(200):
            local.put(f"ab/k{i}", b"x" * i)
        with pytest.raises(S3StoreError, match=config.bucket):
            S3Store(config).sync_from_local(local)
        _restart_with_bucket(server, config)
        store = S3Store(config)  # a new client: the old one's connections are dead
        assert store.sync_from_local(local)["uploaded"] == 200
        assert store.sync_from_local(local)["skipped"] == 200


def test_killing_the_server_mid_multipart_upload_then_running_again(tmp_path: Path) -> None:
    skip_without_s3()
    with S3Server() as server:
        settings: dict[str, Any] = {
            "part_size": 5 * MB,
            "multipart_threshold": 5 * MB,
            "max_concurrency": 1,
            "max_attempts": 2,
            "connect_timeout": 1,
        }
        config = server.make_bucket(**settings)
        data = np.random.default_rng(2).integers(0, 256, 60 * MB, dtype=np.uint8).tobytes()
        store = S3Store(config)
        failed: list[BaseException] = []

        def upload() -> None:
            try:
                store.put("big/x", data)
            except BaseException as error:
                failed.append(error)

        writer = threading.Thread(target=upload)
        writer.start()
        client = server.client()
        deadline = time.monotonic() + 20
        while not client.list_multipart_uploads(Bucket=config.bucket).get("Uploads"):
            assert time.monotonic() < deadline, "the multipart upload never started"
            time.sleep(0.01)
        assert not store.has("big/x")  # invisible until complete
        server.stop()
        writer.join(30)
        assert not writer.is_alive()
        assert len(failed) == 1
        assert isinstance(failed[0], S3StoreError)
        _restart_with_bucket(server, config)
        again = S3Store(config)
        again.put("big/x", data)
        assert again.get("big/x") == data
