"""``.coral/config``: format version and settings, as JSON with dotted keys."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coral_core.codecs import codec_names
from coral_core.delta import MAX_CHAIN_LENGTH, DeltaConfig, DeltaType, kind_name
from coral_core.errors import ConfigError, CorruptObjectError, UnsupportedFormatError
from coral_core.files import write_file_atomic
from coral_core.objects import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE

#: The on-disk format this Coral writes; it reads this and every older one
#: (migrating them on open, see :mod:`coral_core.migrations`). 2: append-only
#: history (prune marks, pins, run pointers, shallow commits).
FORMAT_VERSION = 3

DEFAULTS: dict[str, dict[str, Any]] = {
    "core": {
        "format_version": FORMAT_VERSION,
        "hash": "xxh3-128",
        "chunk_size": DEFAULT_CHUNK_SIZE,
        "compression_level": 1,
        "fsync": True,
    },
    "user": {"name": None, "email": None},
    "delta": {
        "enabled": True,
        "type": kind_name(DeltaConfig().delta_type),
        "max_chain_length": DeltaConfig().max_chain_length,
        "similarity_threshold": DeltaConfig().similarity_threshold,
        "sparse_threshold": DeltaConfig().sparse_threshold,
    },
}

_TYPES: dict[str, type | tuple[type, ...]] = {
    "core.format_version": int,
    "core.hash": str,
    "core.chunk_size": int,
    "core.compression_level": int,
    "core.fsync": bool,
    "user.name": (str, type(None)),
    "user.email": (str, type(None)),
    "delta.enabled": bool,
    "delta.type": str,
    "delta.max_chain_length": int,
    "delta.similarity_threshold": (float, int),
    "delta.sparse_threshold": (float, int),
}


#: The Coral book's names of settings, and the settings they are here.
ALIASES = {
    "core.delta_encoding": "delta.enabled",
    "core.similarity_threshold": "delta.similarity_threshold",
}


def canonical_key(key: str) -> str:
    """``key``, or the setting a book name of it stands for."""
    return ALIASES.get(key, key)


#: What each setting may hold beyond its type, and how to say it.
_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "core.chunk_size": (
        lambda v: 1024 <= v <= MAX_CHUNK_SIZE and v % 16 == 0,
        f"a multiple of 16 from 1024 to {MAX_CHUNK_SIZE}",
    ),
    "core.compression_level": (lambda v: 1 <= v <= 22, "a zstd level from 1 to 22"),
    "core.hash": (lambda v: v == "xxh3-128", '"xxh3-128", the only hash Coral has'),
    "delta.type": (
        lambda v: v in codec_names(),
        "an installed delta codec (" + ", ".join(t.value for t in DeltaType) + ", or a "
        "plugin's, which needs that plugin)",
    ),
    "delta.max_chain_length": (lambda v: 1 <= v <= MAX_CHAIN_LENGTH, f"1 to {MAX_CHAIN_LENGTH}"),
    "delta.similarity_threshold": (lambda v: 0 <= v <= 1, "from 0 to 1"),
    "delta.sparse_threshold": (lambda v: v >= 0, "0 or more"),
}


class RepoConfig:
    """Settings of one repository; ``get("core.chunk_size")``, ``set("user.name", "ada")``."""

    def __init__(self, path: Path, values: dict[str, dict[str, Any]]) -> None:
        self.path = path
        self._values = values

    @classmethod
    def create(cls, path: Path, **core: Any) -> RepoConfig:
        values = copy.deepcopy(DEFAULTS)
        config = cls(path, values)
        for key, value in core.items():
            if value is not None:
                config._check(f"core.{key}", value)
                values["core"][key] = value
        config.save()
        return config

    @classmethod
    def load(cls, path: Path) -> RepoConfig:
        """Read the config and refuse formats newer than this Coral.

        Raises:
            UnsupportedFormatError: for a repository written by a newer Coral.
            CorruptObjectError: for a config that is not valid JSON or not a config.
        """
        try:
            stored = json.loads(path.read_text())
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            raise CorruptObjectError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(stored, dict) or not all(isinstance(s, dict) for s in stored.values()):
            raise CorruptObjectError(f"{path} is not a config: expected an object of sections")
        version = stored.get("core", {}).get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
            raise UnsupportedFormatError(
                f"{path.parent} uses repository format {version}; this Coral reads formats up "
                f"to {FORMAT_VERSION}. Upgrade coral-core to open it."
            )
        values = copy.deepcopy(DEFAULTS)
        for section, items in stored.items():
            values.setdefault(section, {}).update(items)
        for alias, key in ALIASES.items():  # a book's name written into the file by hand
            section, _, name = alias.partition(".")
            if name in values.get(section, {}):
                target, _, setting = key.partition(".")
                values[target][setting] = values[section].pop(name)
        config = cls(path, values)
        for key in _TYPES:
            try:
                config._check_type(key, config.get(key))
            except ConfigError as exc:
                raise CorruptObjectError(f"{path} is damaged: {exc}") from None
        return config

    def save(self) -> None:
        write_file_atomic(self.path, json.dumps(self._values, indent=2).encode() + b"\n")

    def _check(self, key: str, value: Any) -> None:
        key = canonical_key(key)
        self._check_type(key, value)
        allowed, says = _RANGES.get(key, (lambda v: True, ""))
        if not allowed(value):
            raise ConfigError(f"config {key} must be {says}, got {value!r}")

    def _check_type(self, key: str, value: Any) -> None:
        expected = _TYPES.get(key)
        if expected is None:
            raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(_TYPES)}")
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(f"config {key} must be {expected}, got {value!r}")

    def problems(self) -> list[str]:
        """Settings out of their range (written by hand, or by an older Coral),
        each with the command that repairs it."""
        found = []
        for key, (allowed, says) in _RANGES.items():
            value = self.get(key)
            if not allowed(value):
                default = DEFAULTS[key.partition(".")[0]][key.partition(".")[2]]
                found.append(
                    f"{key} is {value!r}, but must be {says}: "
                    f"`coral-ml config {key} {json.dumps(default)}` repairs it"
                )
        return found

    def get(self, key: str) -> Any:
        """A setting by its dotted key (or the book's name of it, see :data:`ALIASES`)."""
        key = canonical_key(key)
        section, _, name = key.partition(".")
        if key not in _TYPES:
            raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(_TYPES)}")
        return self._values[section][name]

    def set(self, key: str, value: Any) -> None:
        """Change a setting and save; ``core.format_version`` cannot be changed."""
        if key == "core.format_version":
            raise ConfigError("core.format_version is set by Coral, not by hand")
        key = canonical_key(key)
        self._check(key, value)
        section, _, name = key.partition(".")
        self._values[section][name] = value
        self.save()

    def set_format_version(self, version: int) -> None:
        """Record that the repository now has format ``version`` (migrations only)."""
        self._values["core"]["format_version"] = version
        self.save()

    def delta_config(self) -> DeltaConfig:
        """The delta settings this repository writes with.

        Raises:
            ConfigError: for an unknown strategy or an out-of-range setting.
        """
        try:
            return DeltaConfig(
                enabled=self.get("delta.enabled"),
                delta_type=self.get("delta.type"),
                compression_level=self.get("core.compression_level"),
                max_chain_length=self.get("delta.max_chain_length"),
                similarity_threshold=float(self.get("delta.similarity_threshold")),
                sparse_threshold=float(self.get("delta.sparse_threshold")),
            )
        except ValueError as exc:
            raise ConfigError(f"bad delta settings in {self.path}: {exc}") from None

    def set_delta_config(self, config: DeltaConfig) -> None:
        """Save delta settings (a lossy ``delta.type`` is an explicit opt-in)."""
        self._values["delta"]["enabled"] = config.enabled
        self._values["delta"]["type"] = kind_name(config.delta_type)
        self._values["delta"]["max_chain_length"] = config.max_chain_length
        self._values["delta"]["similarity_threshold"] = config.similarity_threshold
        self._values["delta"]["sparse_threshold"] = config.sparse_threshold
        self._values["core"]["compression_level"] = config.compression_level
        self.save()

    def items(self) -> dict[str, Any]:
        """Every setting by dotted key."""
        return {key: self.get(key) for key in _TYPES}
