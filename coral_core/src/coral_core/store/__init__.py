"""Stores: where objects live. See :class:`WeightStore`."""

from coral_core.store.base import WeightStore, validate_key
from coral_core.store.local import LocalStore
from coral_core.store.memory import MemoryStore

__all__ = ["LocalStore", "MemoryStore", "WeightStore", "validate_key"]
