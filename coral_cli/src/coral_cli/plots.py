"""The charts of ``diff --plot`` and ``experiment show --plot``, as PNG files.

matplotlib is an extra (``pip install coral-cli[plot]``), imported here only,
when a chart is drawn; charts draw on its Agg canvas, so no window opens and
the process's matplotlib backend is left alone. Nothing that is not a finite
number reaches matplotlib: each chart says itself where it marked what it
could not draw as a bar or a point (the report it returns).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coral_core import ConfigError, CoralError
from coral_core.runs import metric_value

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: At most this many tensors in a change chart: the largest changes.
MAX_TENSORS = 100


@dataclass(frozen=True)
class ChangeChart:
    """What :func:`plot_changes` drew, tensor names by how each is shown."""

    bars: list[str] = field(default_factory=list)  # a finite change: a bar (log scale)
    infinite: list[str] = field(default_factory=list)  # from all zeros: a hatched bar, "inf"
    nan: list[str] = field(default_factory=list)  # NaN: a cross at the left edge, "NaN"
    zero: list[str] = field(default_factory=list)  # bits changed, values equal: a ring, "0"
    left_out: int = 0  # smaller changes beyond MAX_TENSORS
    limits: tuple[float, float] = (1e-6, 1.0)  # the log axis: whole decades around the bars

    def summary(self) -> str:
        """``12 tensors, 3 marked inf, 1 marked NaN``."""
        marks = {"inf": self.infinite, "NaN": self.nan, "0": self.zero}
        shown = len(self.bars) + sum(len(names) for names in marks.values())
        parts = [f"{shown} tensors"] + [f"{len(n)} marked {m}" for m, n in marks.items() if n]
        if self.left_out:
            parts.append(f"{self.left_out} smaller changes left out")
        return ", ".join(parts)


@dataclass(frozen=True)
class CurveChart:
    """What :func:`plot_curves` drew: the metrics, and ``(metric, run, step)``
    points by mark (``kept``, ``pruned``, ``shallow``, ``best``)."""

    metrics: list[str]
    points: dict[str, list[tuple[str, str, int]]]

    def summary(self) -> str:
        """``loss, val_acc over 4 checkpoints: 2 kept, 2 pruned, 1 best``."""
        marks = {
            k: len({(run, step) for _, run, step in found}) for k, found in self.points.items()
        }
        checkpoints = sum(n for k, n in marks.items() if k != "best")
        counts = ", ".join(
            f"{marks[k]} {k}" for k in ("kept", "pruned", "shallow", "best") if k in marks
        )
        return f"{', '.join(self.metrics)} over {checkpoints} checkpoints: {counts}"


def plot_changes(tensors: Sequence[Mapping[str, Any]], title: str, path: Path) -> ChangeChart:
    """A bar per tensor (``name``, ``relative_l2``) of its relative L2 change on
    a log scale, saved to ``path``; infinite and NaN changes are marked at the
    axis' edges. Tensors without a change (None) are left out.

    Raises:
        ConfigError: when matplotlib is not installed.
        OSError: when ``path`` cannot be written.
    """
    changes = {t["name"]: float(t["relative_l2"]) for t in tensors if t["relative_l2"] is not None}
    largest = set(sorted(changes, key=lambda n: _rank(changes[n]))[:MAX_TENSORS])
    names = [n for n in changes if n in largest]  # in the diff's order
    kinds: dict[str, list[str]] = {"bars": [], "infinite": [], "nan": [], "zero": []}
    for name in names:
        kinds[_kind(changes[name])].append(name)
    finite = [changes[n] for n in kinds["bars"]]
    limits = (_decade(min(finite), -1), _decade(max(finite), 1)) if finite else (1e-6, 1.0)
    chart = ChangeChart(**kinds, left_out=len(changes) - len(names), limits=limits)
    low, high = limits

    longest = max((len(n) for n in names), default=0)  # tick labels need the room
    figure = _figure(min(24.0, 6.0 + 0.08 * longest), max(2.5, 0.3 * len(names) + 2.0))
    axes = figure.add_subplot()
    rows = {name: i for i, name in enumerate(names)}
    if chart.bars:
        widths = [changes[n] - low for n in chart.bars]
        axes.barh([rows[n] for n in chart.bars], widths, left=low, label="relative L2 change")
    if chart.infinite:
        axes.barh(
            [rows[n] for n in chart.infinite],
            high - low,
            left=low,
            color="mistyrose",
            edgecolor="firebrick",
            hatch="//",
            label="inf: changed from all zeros",
        )
    edge_marks = (
        (chart.nan, "X", "dimgray", "NaN: not a number"),
        (chart.zero, "o", "none", "0: bits changed, values equal"),
    )
    for found, marker, face, label in edge_marks:
        if found:
            axes.scatter(
                [low] * len(found),
                [rows[n] for n in found],
                marker=marker,
                s=60,
                facecolors=face,
                edgecolors="dimgray",
                clip_on=False,
                zorder=3,
                label=label,
            )
    for found, text, x, align in (
        (chart.infinite, "inf", high, "right"),
        (chart.nan, "NaN", low, "left"),
        (chart.zero, "0", low, "left"),
    ):
        for name in found:
            axes.text(x, rows[name], f"  {text}  ", va="center", ha=align, fontweight="bold")
    axes.set_xscale("log")
    axes.set_xlim(low, high)
    axes.set_ylim(len(names) - 0.5, -0.5)  # the first tensor on top
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel("relative L2 change |after - before| / |before| (log scale)")
    shown_of = f" (the {len(names)} largest of {len(changes)})" if chart.left_out else ""
    axes.set_title(title + shown_of)
    if names:
        figure.legend(loc="outside lower center", ncols=2, fontsize=8)
    figure.savefig(path)
    return chart


def plot_curves(
    items: Sequence[Mapping[str, Any]],
    metrics: Sequence[str],
    labels: Mapping[str, str],
    title: str,
    path: Path,
) -> CurveChart:
    """One panel per metric over steps, a line per run, saved to ``path``;
    each checkpoint (``run``, ``step``, ``weights``, ``best``, ``metrics``)
    marked kept or pruned, and each run's best starred. ``labels`` names runs.

    Raises:
        CoralError: when no checkpoint has a numeric value of any metric.
        ConfigError: when matplotlib is not installed.
        OSError: when ``path`` cannot be written.
    """
    drawn = [
        m for m in metrics if any(metric_value(c["metrics"].get(m)) is not None for c in items)
    ]
    if not drawn:
        raise CoralError("no checkpoint has a numeric metric to plot")
    figure = _figure(8.0, 2.4 * len(drawn) + 1.0)
    panels = figure.subplots(len(drawn), 1, sharex=True, squeeze=False)[:, 0]
    points: dict[str, list[tuple[str, str, int]]] = {}
    by_step = sorted(items, key=lambda c: c["step"])
    for axes, metric in zip(panels, drawn, strict=True):
        for color, run in enumerate(labels):
            found = [
                (c["step"], value, c)
                for c in by_step
                if c["run"] == run and (value := metric_value(c["metrics"].get(metric))) is not None
            ]
            if not found:
                continue
            axes.plot([s for s, _, _ in found], [v for _, v, _ in found], color=f"C{color}")
            for step, value, checkpoint in found:
                kinds = [checkpoint["weights"]] + (["best"] if checkpoint["best"] else [])
                for kind in kinds:
                    _mark(axes, kind, step, value, f"C{color}")
                    points.setdefault(kind, []).append((metric, run, step))
        axes.set_ylabel(metric)
        axes.grid(alpha=0.3)
    panels[-1].set_xlabel("step")
    panels[0].set_title(title)
    figure.legend(handles=_legend(labels, points), loc="outside right upper", fontsize=8)
    figure.savefig(path)
    return CurveChart(drawn, points)


_MARKS: dict[str, dict[str, Any]] = {
    "kept": {"marker": "o", "markersize": 6},
    "pruned": {"marker": "o", "markersize": 6, "markerfacecolor": "white"},
    "shallow": {"marker": "s", "markersize": 6, "markerfacecolor": "white"},
    "best": {"marker": "*", "markersize": 16, "color": "gold", "markeredgecolor": "black"},
}
_MARK_LABELS = {
    "kept": "kept checkpoint",
    "pruned": "pruned (weights gone)",
    "shallow": "shallow (weights not fetched)",
    "best": "best of its run",
}


def _mark(axes: Axes, kind: str, step: int, value: float, color: str) -> None:
    style = {"color": color, "linestyle": "none", **_MARKS.get(kind, _MARKS["pruned"])}
    axes.plot([step], [value], zorder=3 if kind == "best" else 2, **style)


def _legend(labels: Mapping[str, str], points: Mapping[str, Any]) -> list[Any]:
    """Handles for the runs (when there are several) and for each mark used."""
    from matplotlib.lines import Line2D

    handles: list[Any] = []
    if len(labels) > 1:
        handles += [
            Line2D([], [], color=f"C{i}", label=f"run {labels[r]}") for i, r in enumerate(labels)
        ]
    for kind in _MARKS:
        if kind in points:
            style = {"color": "gray", "linestyle": "none", **_MARKS[kind]}
            handles.append(Line2D([], [], label=_MARK_LABELS[kind], **style))
    return handles


def _kind(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "infinite"
    return "bars" if value > 0 else "zero"


def _rank(value: float) -> tuple[int, float]:
    """Sort key, largest change first: NaN and infinities before finite values."""
    return (0, 0.0) if not math.isfinite(value) else (1, -value)


def _decade(value: float, side: int) -> float:
    """A power of ten at least half a decade below (``side`` -1) or above (1)
    positive ``value``, so that no bar ends at an edge (kept within floats)."""
    exponent = math.log10(value) + side / 2
    rounded = math.floor(exponent) if side < 0 else math.ceil(exponent)
    return float(10 ** max(-300, min(300, rounded)))


def _figure(width: float, height: float) -> Figure:
    """A figure on matplotlib's Agg canvas.

    Raises:
        ConfigError: when matplotlib is not installed, naming what to install.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'coral-cli[plot]'") from None
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure
