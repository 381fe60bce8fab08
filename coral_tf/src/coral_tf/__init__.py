"""Coral for tf."""

__version__ = "0.1.0"
