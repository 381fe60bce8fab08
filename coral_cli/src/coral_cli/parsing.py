"""Command-line values: ``--metric key=value`` pairs and ``--filter "val_accuracy>0.9"``."""

from __future__ import annotations

import re
from collections.abc import Sequence

import click

_FILTER = re.compile(r"^\s*([\w.\-/]+)\s*(>=|<=|==|!=|>|<)\s*(.+?)\s*$")


def scalar(text: str) -> float | int | str:
    """``"3"`` -> 3, ``"0.5"`` -> 0.5, anything else stays text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def metric_pairs(values: Sequence[str]) -> dict[str, float | int | str]:
    """``["val_accuracy=0.9", "note=best"]`` -> a metrics dict.

    Raises:
        click.BadParameter: for a value without ``=``.
    """
    metrics = {}
    for value in values:
        key, sep, number = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", param_hint="--metric")
        metrics[key.strip()] = scalar(number.strip())
    return metrics


def metric_filters(values: Sequence[str]) -> dict[str, tuple[str, float | int | str]]:
    """``["val_accuracy>0.9"]`` -> ``{"val_accuracy": (">", 0.9)}``.

    Raises:
        click.BadParameter: for anything that is not NAME OP VALUE.
    """
    filters = {}
    for value in values:
        match = _FILTER.match(value)
        if match is None:
            raise click.BadParameter(
                f"{value!r} is not NAME OP VALUE (ops: > >= < <= == !=)", param_hint="--filter"
            )
        filters[match.group(1)] = (match.group(2), scalar(match.group(3)))
    return filters
