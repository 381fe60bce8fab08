"""Offline, quiet Hugging Face settings for every coral_hf test.

huggingface_hub reads ``HF_HUB_OFFLINE`` when imported, so the fixture sets
its constant as well as the variable; the Hub-server tests turn it off again.
"""

from __future__ import annotations

from collections.abc import Iterator

import huggingface_hub.constants
import pytest

from .hub_server import LocalHub


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("DO_NOT_TRACK", "1")


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHub]:
    """A local Hub server, with the client online for this test."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with LocalHub() as server:
        yield server
    assert server.unhandled == []  # the client asked for nothing the server does not know
