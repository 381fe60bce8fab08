"""The contract every :class:`~coral_core.store.WeightStore` must keep.

Subclass :class:`StoreTests` in a test module and override :meth:`make_store`;
pytest then runs every check against your backend::

    class TestMyStore(StoreTests):
        def make_store(self, tmp_path):
            return MyStore(tmp_path / "objects")

        def make_read_only_store(self, tmp_path):
            return MyStore(tmp_path / "objects", read_only=True)
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coral_core.errors import (
    CoralError,
    InvalidKeyError,
    MissingObjectError,
    ReadOnlyStoreError,
)
from coral_core.store.base import MAX_KEY_LENGTH, WeightStore, validate_key

#: Keys every store must refuse with :class:`InvalidKeyError`.
BAD_KEYS: list[str] = [
    "",
    "/abs",
    "/",
    "a/",
    "a/../b",
    "..",
    "../up",
    ".",
    "./a",
    "a//b",
    ".hidden",
    "a/.hidden",
    "with space",
    "a\\b",
    "a\nb",
    "a\x00b",
    "tab\t",
    "ä",
    "x" * (MAX_KEY_LENGTH + 1),
]

#: Unusual keys every store must accept.
ODD_GOOD_KEYS: list[str] = [
    "a",
    "-",
    "_",
    "a.",
    "a..b",
    "A-Z_a.z-0.9",
    "a/b/c/d/e/f",
    "ab/c..d.",  # a segment may hold dots after its first character
    "/".join(["k" * 99] * 10) + "/" + "z" * (MAX_KEY_LENGTH - 1000),  # exactly the limit
]

_KEYS = st.sampled_from(["ab/cdef", "ab/cdxx", "ab/ff", "ac/cdef", "zz", "q/r/s"])


def _files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def put_in_a_batch(
    store: WeightStore, key: str, value: bytes, then_raise: BaseException | None = None
) -> None:
    """Write one key through :meth:`WeightStore.write_batch`; raise ``then_raise``
    inside the block (a crash before the batch finishes)."""
    with store.write_batch() as batch:
        batch.put_if_absent(key, value)
        if then_raise is not None:
            raise then_raise


def _run_threads(count: int, target: Callable[[int], None]) -> None:
    """Run ``target(i)`` on ``count`` threads at once; re-raise the first error."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def run(index: int) -> None:
        try:
            barrier.wait()
            target(index)
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


class StoreTests:
    """Checks for put/get/has/delete/list/size, byte ranges, atomicity and bad keys.

    Override :meth:`make_store`; override :meth:`make_read_only_store` when the
    backend has a read-only mode, and set :attr:`read_only_sees_writes` to False
    when that store cannot see what :meth:`make_store`'s store wrote.
    """

    #: the read-only store of ``tmp_path`` sees the objects written by ``make_store(tmp_path)``
    read_only_sees_writes: bool = True

    def make_store(self, tmp_path: Path) -> WeightStore:
        """A new, empty store keeping its data under ``tmp_path`` (if anywhere)."""
        raise NotImplementedError("override make_store to return the store under test")

    def make_read_only_store(self, tmp_path: Path) -> WeightStore | None:
        """The store of ``tmp_path`` opened read-only; None when the backend has no such mode."""
        return None

    @pytest.fixture
    def store(self, tmp_path: Path) -> WeightStore:
        """The store under test, fresh for each test."""
        return self.make_store(tmp_path)

    # -- put / get -------------------------------------------------------------------

    def test_put_get_round_trip(self, store: WeightStore) -> None:
        store.put("ab/cdef", b"hello")
        assert store.get("ab/cdef") == b"hello"
        assert isinstance(store.get("ab/cdef"), bytes)

    def test_put_accepts_memoryviews(self, store: WeightStore) -> None:
        store.put("m/plain", memoryview(b"from a view"))
        store.put("m/slice", memoryview(b"0123456789")[2:5])
        typed = np.arange(10, dtype=np.float32)
        store.put("m/typed", typed.data)
        assert store.get("m/plain") == b"from a view"
        assert store.get("m/slice") == b"234"
        assert store.get("m/typed") == typed.tobytes()
        assert store.size("m/typed") == typed.nbytes
        store.put("m/strided", memoryview(b"0123456789")[::2])
        store.put("m/strided-typed", typed[::3].data)
        assert store.get("m/strided") == b"02468"
        assert store.get("m/strided-typed") == typed[::3].tobytes()

    def test_put_copies_its_input(self, store: WeightStore) -> None:
        buffer = bytearray(b"before")
        store.put("c/x", memoryview(buffer))
        buffer[:] = b"after!"
        assert store.get("c/x") == b"before"

    def test_empty_value(self, store: WeightStore) -> None:
        store.put("e/empty", b"")
        assert store.has("e/empty")
        assert store.get("e/empty") == b""
        assert store.size("e/empty") == 0
        assert list(store.list("e/")) == ["e/empty"]

    def test_large_value(self, store: WeightStore) -> None:
        big = np.random.default_rng(0).integers(0, 256, 5 * 2**20, dtype=np.uint8).tobytes()
        store.put("e/big", big)
        assert store.size("e/big") == len(big)
        assert store.get("e/big") == big
        assert store.get("e/big", byte_range=(2**20, 2**20 + 7)) == big[2**20 : 2**20 + 7]

    @pytest.mark.parametrize("key", ODD_GOOD_KEYS)
    def test_unusual_valid_keys(self, store: WeightStore, key: str) -> None:
        store.put(key, b"odd")
        assert store.has(key)
        assert store.get(key) == b"odd"
        assert list(store.list()) == [key]
        assert store.delete(key) is True

    # -- byte ranges -----------------------------------------------------------------

    @pytest.mark.parametrize(
        ("start", "end"), [(0, 4), (7, 10), (8, 100), (5, 5), (0, 10), (10, 10), (50, 60)]
    )
    def test_byte_ranges(self, store: WeightStore, start: int, end: int) -> None:
        value = b"0123456789"
        store.put("r/x", value)
        assert store.get("r/x", byte_range=(start, end)) == value[start:end]

    def test_bad_byte_ranges(self, store: WeightStore) -> None:
        store.put("r/x", b"0123456789")
        for byte_range in [(-1, 3), (5, 4)]:
            with pytest.raises(ValueError, match="byte range"):
                store.get("r/x", byte_range=byte_range)

    def test_byte_range_of_a_missing_key(self, store: WeightStore) -> None:
        with pytest.raises(MissingObjectError):
            store.get("r/none", byte_range=(0, 1))

    # -- has / delete / size ---------------------------------------------------------

    def test_has(self, store: WeightStore) -> None:
        assert not store.has("d/x")
        store.put("d/x", b"1")
        assert store.has("d/x")
        assert not store.has("d/y")

    def test_delete_says_whether_it_removed(self, store: WeightStore) -> None:
        store.put("d/x", b"1")
        assert store.delete("d/x") is True
        assert store.delete("d/x") is False
        assert store.delete("never/there") is False
        assert not store.has("d/x")
        with pytest.raises(MissingObjectError):
            store.get("d/x")
        store.put("d/x", b"2")  # a deleted key can be written again
        assert store.get("d/x") == b"2"

    def test_size(self, store: WeightStore) -> None:
        store.put("s/five", b"12345")
        store.put("s/view", memoryview(b"abc"))
        assert store.size("s/five") == 5
        assert store.size("s/view") == 3

    def test_missing_key(self, store: WeightStore) -> None:
        with pytest.raises(MissingObjectError) as caught:
            store.get("no/such")
        assert isinstance(caught.value, LookupError)
        assert isinstance(caught.value, CoralError)
        with pytest.raises(LookupError):
            store.size("no/such")

    # -- list ------------------------------------------------------------------------

    def test_list_empty_store(self, store: WeightStore) -> None:
        assert list(store.list()) == []
        assert list(store.list("ab/")) == []

    def test_list_by_prefix(self, store: WeightStore) -> None:
        keys = {"ab/cdef", "ab/cdxx", "ab/ce", "ab/ffff", "ac/cdef", "zz", "q/r/s/t"}
        for key in keys:
            store.put(key, b"v")
        listed = list(store.list())
        assert len(listed) == len(set(listed))
        assert set(listed) == keys
        assert set(store.list("ab/")) == {"ab/cdef", "ab/cdxx", "ab/ce", "ab/ffff"}
        assert set(store.list("ab")) == {"ab/cdef", "ab/cdxx", "ab/ce", "ab/ffff"}
        assert set(store.list("ab/cd")) == {"ab/cdef", "ab/cdxx"}
        assert set(store.list("ab/cdef")) == {"ab/cdef"}
        assert set(store.list("a")) == keys - {"zz", "q/r/s/t"}
        assert set(store.list("q/r")) == {"q/r/s/t"}
        assert set(store.list("q/r/s/")) == {"q/r/s/t"}
        assert list(store.list("nothing/")) == []
        assert list(store.list("ab/cdefg")) == []

    def test_list_forgets_deleted_keys(self, store: WeightStore) -> None:
        store.put("l/a", b"1")
        store.put("l/b", b"2")
        store.delete("l/a")
        assert list(store.list("l/")) == ["l/b"]

    # -- replacing -------------------------------------------------------------------

    def test_put_replaces(self, store: WeightStore) -> None:
        store.put("p/x", b"a much longer old value")
        store.put("p/x", b"new")
        assert store.get("p/x") == b"new"
        assert store.size("p/x") == 3
        assert list(store.list("p/")) == ["p/x"]

    def test_put_if_absent_keeps_the_first_value(self, store: WeightStore) -> None:
        assert store.put_if_absent("i/x", b"first") is True
        assert store.put_if_absent("i/x", b"second") is False
        assert store.get("i/x") == b"first"
        store.delete("i/x")
        assert store.put_if_absent("i/x", memoryview(b"third")) is True
        assert store.get("i/x") == b"third"

    # -- bad keys --------------------------------------------------------------------

    @pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
    def test_bad_keys_are_refused(self, tmp_path: Path, key: str) -> None:
        store = self.make_store(tmp_path)
        store.put("ok/key", b"v")
        files = _files_under(tmp_path)
        actions: list[Callable[[], object]] = [
            lambda: store.put(key, b"x"),
            lambda: store.put_if_absent(key, b"x"),
            lambda: store.get(key),
            lambda: store.has(key),
            lambda: store.size(key),
            lambda: store.delete(key),
        ]
        for action in actions:
            with pytest.raises(InvalidKeyError):
                action()
        assert isinstance(InvalidKeyError("k"), ValueError)
        assert list(store.list()) == ["ok/key"]
        assert _files_under(tmp_path) == files  # nothing was created, inside or out

    # -- read-only -------------------------------------------------------------------

    def test_read_only_store_refuses_writes(self, tmp_path: Path) -> None:
        writable = self.make_store(tmp_path)
        writable.put("ro/x", b"data")
        store = self.make_read_only_store(tmp_path)
        if store is None:
            pytest.skip("this backend has no read-only mode")
        assert store.read_only
        actions: list[Callable[[], object]] = [
            lambda: store.put("ro/y", b"x"),
            lambda: store.put("ro/x", b"overwrite"),
            lambda: store.put_if_absent("ro/y", b"x"),
            lambda: store.delete("ro/x"),
            lambda: store.delete("ro/missing"),
        ]
        for action in actions:
            with pytest.raises(ReadOnlyStoreError) as caught:
                action()
            assert isinstance(caught.value, PermissionError)
        assert not store.has("ro/y")
        assert writable.get("ro/x") == b"data"
        assert not writable.has("ro/y")
        if self.read_only_sees_writes:
            assert store.has("ro/x")
            assert store.get("ro/x") == b"data"
            assert store.get("ro/x", byte_range=(1, 3)) == b"at"
            assert store.size("ro/x") == 4
            assert list(store.list()) == ["ro/x"]

    # -- threads ---------------------------------------------------------------------

    def test_concurrent_writers_all_land(self, store: WeightStore) -> None:
        workers, per_worker = 4, 40

        def write(worker: int) -> None:
            for i in range(per_worker):
                store.put(f"t{worker}/k{i}", f"{worker}-{i}".encode())

        _run_threads(workers, write)
        assert len(set(store.list())) == workers * per_worker
        for worker in range(workers):
            for i in range(per_worker):
                assert store.get(f"t{worker}/k{i}") == f"{worker}-{i}".encode()

    def test_concurrent_put_if_absent_has_one_winner(self, store: WeightStore) -> None:
        workers = 8
        won: list[int] = []

        def race(worker: int) -> None:
            if store.put_if_absent("race/x", f"worker {worker}".encode()):
                won.append(worker)

        _run_threads(workers, race)
        assert len(won) == 1
        assert store.get("race/x") == f"worker {won[0]}".encode()

    def test_compare_and_swap(self, store: WeightStore) -> None:
        assert store.compare_and_swap("refs/heads/main", None, b"a\n")  # create
        assert not store.compare_and_swap("refs/heads/main", None, b"b\n")  # exists now
        assert not store.compare_and_swap("refs/heads/main", b"x\n", b"b\n")  # wrong value
        assert store.get("refs/heads/main") == b"a\n"
        assert store.compare_and_swap("refs/heads/main", b"a\n", b"b\n")
        assert store.get("refs/heads/main") == b"b\n"
        assert set(store.list("refs/")) == {"refs/heads/main"}  # no lock left behind

    def test_compare_and_delete(self, store: WeightStore) -> None:
        assert not store.compare_and_delete("refs/heads/gone", b"a\n")  # absent
        store.put("refs/heads/main", b"a\n")
        assert not store.compare_and_delete("refs/heads/main", b"b\n")  # another value
        assert store.get("refs/heads/main") == b"a\n"
        assert store.compare_and_delete("refs/heads/main", b"a\n")
        assert not store.has("refs/heads/main")
        assert list(store.list("refs/")) == []  # no lock left behind

    def test_concurrent_compare_and_swap_loses_no_update(self, store: WeightStore) -> None:
        """Eight writers each add one to a counter by swapping: every add lands."""
        store.put("count", b"0")
        rounds = 5

        def add(worker: int) -> None:
            done = 0
            while done < rounds:
                current = store.get("count")
                if store.compare_and_swap("count", current, str(int(current) + 1).encode()):
                    done += 1

        _run_threads(8, add)
        assert store.get("count") == str(8 * rounds).encode()

    def test_readers_see_whole_values_while_a_key_is_replaced(self, store: WeightStore) -> None:
        values = [bytes([fill]) * 65536 for fill in (0x11, 0x22, 0x33)]
        store.put("atomic/x", values[0])
        seen: set[bytes] = set()

        def work(worker: int) -> None:
            for i in range(15):
                if worker == 0:
                    store.put("atomic/x", values[i % len(values)])
                else:
                    seen.add(store.get("atomic/x"))

        _run_threads(3, work)
        assert seen <= set(values)

    # -- write batches ---------------------------------------------------------------

    def test_write_batch_lands_everything(self, store: WeightStore) -> None:
        store.put("b/old", b"kept")

        def write(batch_writer: int) -> None:
            for i in range(20):
                assert batch.put_if_absent(f"b/w{batch_writer}-{i}", b"v%d" % i)

        with store.write_batch() as batch:
            _run_threads(3, write)
            assert batch.put_if_absent("b/old", b"replaced?") is False
        assert len(list(store.list("b/"))) == 61
        assert store.get("b/w2-19") == b"v19"
        assert store.get("b/old") == b"kept"

    def test_write_batch_takes_a_key_once(self, store: WeightStore) -> None:
        with store.write_batch() as batch:
            assert batch.put_if_absent("b/dup", b"first") is True
            assert batch.put_if_absent("b/dup", b"second") is False
        assert store.get("b/dup") == b"first"

    def test_write_batch_failing_leaves_no_stray_files(self, store: WeightStore) -> None:
        with pytest.raises(RuntimeError):
            put_in_a_batch(store, "b/lost", b"x", then_raise=RuntimeError("crash in the middle"))
        store.put("b/after", b"ok")  # the store still works
        assert store.get("b/after") == b"ok"
        keys = sorted(store.list("b/"))
        assert keys in (["b/after"], ["b/after", "b/lost"])  # discarded, or already visible
        if "b/lost" in keys:
            assert store.get("b/lost") == b"x"

    def test_write_batch_on_read_only_store_refuses(
        self, tmp_path: Path, store: WeightStore
    ) -> None:
        read_only = self.make_read_only_store(tmp_path)
        if read_only is None:
            pytest.skip("this backend has no read-only mode")
        with pytest.raises(ReadOnlyStoreError):
            put_in_a_batch(read_only, "b/x", b"1")

    # -- against a model -------------------------------------------------------------

    @settings(
        max_examples=40,
        deadline=None,
        # every subclass runs this one method against its own backend, on purpose
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.differing_executors,
        ],
    )
    @given(
        operations=st.lists(
            st.tuples(
                st.sampled_from(["put", "put_if_absent", "delete", "get"]),
                _KEYS,
                st.binary(max_size=16),
            ),
            max_size=12,
        )
    )
    def test_behaves_like_a_dict(
        self, tmp_path: Path, operations: list[tuple[str, str, bytes]]
    ) -> None:
        store = self.make_store(Path(tempfile.mkdtemp(dir=tmp_path)))
        model: dict[str, bytes] = {}
        for operation, key, value in operations:
            if operation == "put":
                store.put(key, value)
                model[key] = value
            elif operation == "put_if_absent":
                assert store.put_if_absent(key, value) is (key not in model)
                model.setdefault(key, value)
            elif operation == "delete":
                assert store.delete(key) is (model.pop(key, None) is not None)
            elif key in model:
                assert store.get(key) == model[key]
            else:
                with pytest.raises(MissingObjectError):
                    store.get(key)
        assert sorted(store.list()) == sorted(model)
        for key, value in model.items():
            assert store.has(key)
            assert store.size(key) == len(value)
        for key in store.list():
            assert validate_key(key) == key

    # -- lifecycle -------------------------------------------------------------------

    def test_context_manager(self, store: WeightStore) -> None:
        with store as entered:
            assert entered is store
            store.put("cm/x", b"1")
