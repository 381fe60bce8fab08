"""``S3Store``: objects in a bucket of any S3-compatible server (AWS S3, MinIO, Ceph, R2).

boto3 is an extra (``pip install coral-core[s3]``), imported only when a store is
made. Creates and ref updates use S3's conditional writes (``If-None-Match: *``
and ``If-Match: <etag>``), so two writers racing never silently overwrite each
other; big objects go up in parallel multipart uploads, ranged reads are ranged
GETs, and transient failures are retried with backoff.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from coral_core.errors import CoralError, InvalidKeyError, MissingObjectError
from coral_core.store.base import WeightStore, validate_key

T = TypeVar("T")

#: Error codes S3-compatible servers answer for bad or missing permissions.
_ACCESS_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled", "403"}
)
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
#: Writes that lost a race (412), or a conditional write racing another one (409).
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "412"})
_CONFLICT_CODES = frozenset({"ConditionalRequestConflict", "409"})


class S3StoreError(CoralError, OSError):
    """An S3 request failed for a reason other than a missing object: a missing
    bucket, denied access, no credentials, an unreachable endpoint."""


@dataclass(frozen=True)
class S3Config:
    """Where an :class:`S3Store` keeps its objects and how it talks to the server.

    Args:
        bucket: the bucket (it must exist).
        prefix: objects live under ``prefix/`` in the bucket (``""``: at its root).
        region: the bucket's region; None takes it from the AWS configuration.
        endpoint_url: the server of a non-AWS service (``http://127.0.0.1:9000``);
            path-style addressing is used with it.
        access_key, secret_key, session_token: credentials; None uses the standard
            AWS chain (environment, ``~/.aws``, instance or container role).
        profile: a named profile of the AWS configuration files.
        multipart_threshold: objects of at least this many bytes go up in parts
            (by default more than a pack holds: one request per pack).
        part_size: bytes per part (S3 wants at least 5 MiB for all but the last).
        max_concurrency: parts uploaded at once, and objects moved at once by sync.
        max_attempts: tries per request (botocore's standard retry mode: backoff
            with jitter on throttling, 5xx and connection errors).
        connect_timeout, read_timeout: seconds per request.
        conditional_writes: the server honours ``If-None-Match``/``If-Match`` on
            writes. Set False for servers that ignore them; creates then check
            before writing and swaps take a lock object, which is not race-proof.
    """

    bucket: str
    prefix: str = ""
    region: str | None = None
    endpoint_url: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None
    profile: str | None = None
    multipart_threshold: int = 96 * 2**20
    part_size: int = 8 * 2**20
    max_concurrency: int = 8
    max_attempts: int = 5
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    conditional_writes: bool = True

    def __post_init__(self) -> None:
        if not self.bucket:
            raise ValueError("S3Config needs a bucket name")
        if self.part_size < 5 * 2**20 or self.multipart_threshold < self.part_size:
            raise ValueError(
                "S3Config: part_size must be at least 5 MiB and multipart_threshold at least "
                f"part_size; got part_size={self.part_size}, "
                f"multipart_threshold={self.multipart_threshold}"
            )
        if self.max_concurrency < 1 or self.max_attempts < 1:
            raise ValueError("S3Config: max_concurrency and max_attempts must be at least 1")
        if self.prefix.strip("/"):
            validate_key(self.prefix.strip("/"))

    @property
    def url(self) -> str:
        """``s3://bucket/prefix``, for messages."""
        prefix = self.prefix.strip("/")
        return f"s3://{self.bucket}/{prefix}" if prefix else f"s3://{self.bucket}"


def _import_boto3() -> Any:
    try:
        import boto3  # type: ignore[import-untyped]
    except ImportError:
        raise CoralError(
            "S3Store needs boto3: pip install 'coral-core[s3]' (or pip install boto3)"
        ) from None
    return boto3


class S3Store(WeightStore):
    """Objects as S3 objects: the key ``ab/cdef`` is ``s3://bucket/prefix/ab/cdef``.

    Thread-safe (one boto3 client, shared). Writes are atomic as S3 makes them:
    a reader sees the whole old object or the whole new one, and a multipart
    upload is invisible until it completes.

    Args:
        config: the bucket, prefix, endpoint, credentials and transfer settings.
        read_only: refuse every write.

    Raises:
        CoralError: when boto3 is not installed.
    """

    def __init__(self, config: S3Config, *, read_only: bool = False) -> None:
        boto3 = _import_boto3()
        from botocore import exceptions  # type: ignore[import-untyped]
        from botocore.config import Config  # type: ignore[import-untyped]

        self.config = config
        self.read_only = read_only
        self._exceptions = exceptions
        self._root = config.prefix.strip("/") + "/" if config.prefix.strip("/") else ""
        session = boto3.session.Session(
            aws_access_key_id=config.access_key,
            aws_secret_access_key=config.secret_key,
            aws_session_token=config.session_token,
            region_name=config.region,
            profile_name=config.profile,
        )
        self._client = session.client(
            "s3",
            endpoint_url=config.endpoint_url,
            config=Config(
                retries={"mode": "standard", "max_attempts": config.max_attempts},
                connect_timeout=config.connect_timeout,
                read_timeout=config.read_timeout,
                max_pool_connections=max(10, 2 * config.max_concurrency),
                s3={"addressing_style": "path"} if config.endpoint_url else None,
            ),
        )
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    # -- requests ----------------------------------------------------------------

    def _key(self, key: str) -> str:
        return self._root + validate_key(key)

    def _error(self, error: Exception, key: str | None) -> Exception:
        """The Coral error for a botocore one, naming the bucket and key."""
        where = f"{self.config.url}/{key}" if key else self.config.url
        exceptions = self._exceptions
        if isinstance(error, exceptions.ClientError):
            details = error.response.get("Error", {})
            code = str(details.get("Code", ""))
            message = details.get("Message", "")
            if code in _MISSING_CODES and key is not None:
                return MissingObjectError(f"object {key!r} is not in {self.config.url}")
            if code == "NoSuchBucket":
                return S3StoreError(
                    f"S3 bucket {self.config.bucket!r} does not exist"
                    f"{self._at()}; create it or fix the bucket name"
                )
            if code in _ACCESS_CODES:
                return S3StoreError(
                    f"access to S3 bucket {self.config.bucket!r}{self._at()} was denied "
                    f"({code}: {message}); check the credentials and the bucket policy"
                )
            if code == "KeyTooLongError":
                return InvalidKeyError(f"store key {key!r} is too long for S3 under {where}")
            return S3StoreError(f"S3 request for {where} failed: {code}: {message}")
        if isinstance(error, exceptions.NoCredentialsError | exceptions.PartialCredentialsError):
            return S3StoreError(
                f"no AWS credentials for S3 bucket {self.config.bucket!r}: set access_key and "
                "secret_key in S3Config, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or a profile"
            )
        return S3StoreError(
            f"S3 request for {where} failed after {self.config.max_attempts} attempts{self._at()}: "
            f"{error}"
        )

    def _at(self) -> str:
        return f" at {self.config.endpoint_url}" if self.config.endpoint_url else ""

    def _code(self, error: BaseException) -> str:
        if isinstance(error, self._exceptions.ClientError):
            return str(error.response.get("Error", {}).get("Code", ""))
        return ""

    def _response(self, error: BaseException) -> dict[str, Any]:
        """The response metadata of a refused request (``RetryAttempts``, ...)."""
        if isinstance(error, self._exceptions.ClientError):
            return dict(error.response.get("ResponseMetadata", {}))
        return {}

    def _call(self, operation: str, key: str | None, **kwargs: Any) -> Any:
        """One S3 request, retried by botocore; a failure as a Coral error.

        Also retried here: a body that broke off while being read (botocore's
        retries end when the response headers arrive) and a conditional write
        that raced another one (409). A GET's body is read into ``"Data"``.
        """
        exceptions = self._exceptions
        method = getattr(self._client, operation)
        for attempt in range(1, self.config.max_attempts + 1):
            reading = False
            try:
                response = method(Bucket=self.config.bucket, **kwargs)
                if operation == "get_object":
                    reading = True
                    response["Data"] = response["Body"].read()
                return response
            except exceptions.ClientError as error:
                if self._code(error) not in _CONFLICT_CODES or attempt == self.config.max_attempts:
                    raise self._error(error, key) from error
            except exceptions.BotoCoreError as error:
                if not reading or attempt == self.config.max_attempts:
                    raise self._error(error, key) from error
            time.sleep(min(0.1 * 2**attempt, 5.0))
        raise AssertionError("unreachable")  # pragma: no cover

    def _conditional(self, write: Callable[[], object], key: str, new: bytes | None = None) -> bool:
        """Run a conditional write of ``key``; False when its condition did not hold.

        With ``new``: a condition that failed only on a retry of the request (the
        first attempt may have landed and its answer been lost) counts as met
        when ``key`` now holds ``new``.
        """
        try:
            write()
        except (S3StoreError, MissingObjectError) as error:
            cause = error.__cause__
            if cause is None or self._code(cause) not in _PRECONDITION_CODES | _MISSING_CODES:
                raise
            if new is not None and self._response(cause).get("RetryAttempts", 0) > 0:
                try:
                    return self.get(key) == new
                except MissingObjectError:
                    return False
            return False
        return True

    def _map_parts(self, function: Callable[[Any], T], items: list[Any]) -> list[T]:
        """``function`` over ``items`` on the store's pool of ``max_concurrency`` threads,
        for the parts of multipart uploads."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self.config.max_concurrency, thread_name_prefix="coral-s3"
                )
        return list(self._pool.map(function, items))

    def _upload(self, key: str, data: bytes | memoryview, **conditions: str) -> None:
        """Write ``data`` under ``key``: one PUT, or a multipart upload when big."""
        view = memoryview(data)
        if not view.contiguous:
            view = memoryview(view.tobytes())
        view = view.cast("B")
        s3_key = self._key(key)
        if len(view) < self.config.multipart_threshold:
            self._call("put_object", key, Key=s3_key, Body=bytes(view), **conditions)
            return
        upload = self._call("create_multipart_upload", key, Key=s3_key)["UploadId"]
        try:
            size = self.config.part_size
            starts = list(range(0, len(view), size))
            # the last part takes the remainder, so none is under the 5 MiB minimum
            if len(starts) > 1 and len(view) - starts[-1] < 5 * 2**20:
                starts.pop()

            def send(number: int) -> dict[str, Any]:
                start = starts[number - 1]
                end = starts[number] if number < len(starts) else len(view)
                part = self._call(
                    "upload_part",
                    key,
                    Key=s3_key,
                    UploadId=upload,
                    PartNumber=number,
                    Body=bytes(view[start:end]),
                )
                return {"ETag": part["ETag"], "PartNumber": number}

            parts = self._map_parts(send, list(range(1, len(starts) + 1)))
            self._call(
                "complete_multipart_upload",
                key,
                Key=s3_key,
                UploadId=upload,
                MultipartUpload={"Parts": parts},
                **conditions,
            )
        except BaseException:
            # Best effort: a server that is down keeps the parts (a lifecycle rule for
            # incomplete multipart uploads removes them); the first error is the one to report.
            with contextlib.suppress(Exception):
                self._client.abort_multipart_upload(
                    Bucket=self.config.bucket, Key=s3_key, UploadId=upload
                )
            raise

    # -- WeightStore ---------------------------------------------------------------

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        s3_key = self._key(key)
        if byte_range is None:
            return bytes(self._call("get_object", key, Key=s3_key)["Data"])
        start, end = byte_range
        if start < 0 or end < start:
            raise ValueError(f"invalid byte range {byte_range!r}")
        if start == end:  # S3 has no empty range
            if not self.has(key):
                raise MissingObjectError(f"object {key!r} is not in {self.config.url}")
            return b""
        try:
            response = self._call("get_object", key, Key=s3_key, Range=f"bytes={start}-{end - 1}")
        except S3StoreError as error:
            if error.__cause__ is not None and self._code(error.__cause__) == "InvalidRange":
                return b""  # starts at or past the end, like slicing
            raise
        return bytes(response["Data"])

    def put(self, key: str, data: bytes | memoryview) -> None:
        self._check_writable(key)
        self._upload(key, data)

    def put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        """Store ``data`` unless ``key`` exists: one conditional write (``If-None-Match``)."""
        self._check_writable(key)
        if not self.config.conditional_writes:
            return super().put_if_absent(key, data)
        return self._conditional(lambda: self._upload(key, data, IfNoneMatch="*"), key)

    def compare_and_swap(self, key: str, expected: bytes | None, new: bytes) -> bool:
        """Swap with a conditional write: ``If-None-Match: *`` to create, ``If-Match``
        on the ETag of the value read to replace. A write whose answer was lost,
        retried and refused reports True when the key holds ``new`` (it landed)."""
        self._check_writable(key)
        if not self.config.conditional_writes:
            return super().compare_and_swap(key, expected, new)
        if expected is None:
            return self._conditional(lambda: self._upload(key, new, IfNoneMatch="*"), key, new)
        etag = self._etag_if(key, expected)
        if etag is None:
            return False
        return self._conditional(lambda: self._upload(key, new, IfMatch=etag), key, new)

    def _etag_if(self, key: str, expected: bytes) -> str | None:
        """The ETag of ``key`` when it holds ``expected`` (None otherwise)."""
        try:
            response = self._call("get_object", key, Key=self._key(key))
        except MissingObjectError:
            return None
        return str(response["ETag"]) if response["Data"] == expected else None

    def compare_and_delete(self, key: str, expected: bytes) -> bool:
        """Delete with ``If-Match`` on the ETag of the value read."""
        self._check_writable(key)
        if not self.config.conditional_writes:
            return super().compare_and_delete(key, expected)
        etag = self._etag_if(key, expected)
        if etag is None:
            return False
        delete = partial(self._call, "delete_object", key, Key=self._key(key), IfMatch=etag)
        return self._conditional(delete, key)

    def has(self, key: str) -> bool:
        try:
            self._call("head_object", key, Key=self._key(key))
        except MissingObjectError:
            return False
        return True

    def delete(self, key: str) -> bool:
        self._check_writable(key)
        if not self.has(key):
            return False
        self._call("delete_object", key, Key=self._key(key))
        return True

    def list(self, prefix: str = "") -> Iterator[str]:
        for key, _ in self.list_sizes(prefix):
            yield key

    def list_sizes(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """Yield ``(key, size)`` of every key starting with ``prefix``, a page at a time.

        Objects under the prefix whose names are not valid store keys (put there
        by something else) are left out.
        """
        token: dict[str, str] = {}
        while True:
            page = self._call("list_objects_v2", None, Prefix=self._root + prefix, **token)
            for entry in page.get("Contents", []):
                key = entry["Key"][len(self._root) :]
                try:
                    validate_key(key)
                except InvalidKeyError:
                    continue
                yield key, int(entry["Size"])
            if not page.get("IsTruncated"):
                return
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def size(self, key: str) -> int:
        return int(self._call("head_object", key, Key=self._key(key))["ContentLength"])

    # -- sync ----------------------------------------------------------------------

    def sync_from_local(self, local: WeightStore, prefix: str = "") -> dict[str, int]:
        """Upload every object of ``local`` (under ``prefix``) this store lacks.

        An object already here with the same size is skipped: objects are
        content-addressed, so the same key holds the same bytes. Runs
        ``max_concurrency`` transfers at once.

        Returns:
            ``{"uploaded": n, "skipped": n, "bytes_transferred": n}``.
        """
        here = dict(self.list_sizes(prefix))

        def upload(key: str) -> int:
            if here.get(key) == local.size(key):
                return -1
            data = local.get(key)
            self.put(key, data)
            return len(data)

        keys = list(local.list(prefix))
        return _counts("uploaded", _run_all(upload, keys, self.config.max_concurrency))

    def sync_to_local(self, local: WeightStore, prefix: str = "") -> dict[str, int]:
        """Download every object of this store (under ``prefix``) that ``local`` lacks.

        Returns:
            ``{"downloaded": n, "skipped": n, "bytes_transferred": n}``.
        """

        def download(entry: tuple[str, int]) -> int:
            key, size = entry
            if local.has(key) and local.size(key) == size:
                return -1
            data = self.get(key)
            local.put(key, data)
            return len(data)

        entries = list(self.list_sizes(prefix))
        return _counts("downloaded", _run_all(download, entries, self.config.max_concurrency))

    # -- lifecycle -----------------------------------------------------------------

    def close(self) -> None:
        """Stop the transfer threads and close the client's connections."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self._client.close()

    def __repr__(self) -> str:
        return f"S3Store({self.config.url!r}{self._at()})"


def _run_all(function: Callable[[T], int], items: list[T], threads: int) -> list[int]:
    """The transfers of one sync, ``threads`` at once (a pool of its own, so the
    uploads it runs never wait for the store's part threads to free up)."""
    with ThreadPoolExecutor(threads, "coral-s3-sync") as pool:
        return list(pool.map(function, items))


def _counts(moved: str, sizes: list[int]) -> dict[str, int]:
    """Sync counts from per-object results (bytes moved, or -1 when skipped)."""
    done = [size for size in sizes if size >= 0]
    return {
        moved: len(done),
        "skipped": len(sizes) - len(done),
        "bytes_transferred": sum(done),
    }
