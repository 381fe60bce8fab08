"""Coral for hf."""

__version__ = "0.1.0"
