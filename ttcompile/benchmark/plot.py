"""Figures written as PNG (matplotlib's Agg canvas, no pyplot state): the ``bench --plot`` trade-off
plot and the Pareto plots of the benchmark result tables. Files are replaced atomically."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ttcompile.atomic import write_bytes_atomic
from ttcompile.errors import UserError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ttcompile.benchmark.bench import BenchReport

DPI = 110
MARKERS = "osD^vPX"  # one per group (model); colours tell the series apart


@dataclass(frozen=True)
class Point:
    """One model on a quality-vs-size plane. ``series``: legend entry; ``group``: points whose Pareto
    front is drawn together (e.g. one model's compressions); ``label``: annotation beside the point."""

    x: float
    y: float
    series: str
    group: str = ""
    label: str | None = None


@dataclass
class Pareto:
    """A Pareto plot: ``points`` (higher y is better, x on a log scale) with axis labels, units included."""

    points: list[Point]
    xlabel: str
    ylabel: str
    title: str
    notes: list[str] = field(default_factory=list)  # one-line captions under the title


def pareto_front(points: list[Point]) -> list[Point]:
    """The points no other point dominates (x no larger and y no lower, one of them strictly), sorted by x."""
    front: list[Point] = []
    for p in sorted(points, key=lambda p: (p.x, -p.y)):
        if not front or p.y > front[-1].y:
            front.append(p)
    return front


def pareto_figure(spec: Pareto) -> Figure:
    """Scatter of ``spec.points`` (colour per series, marker per group) with each group's Pareto front as
    a dashed step line; the legend sits right of the axes."""
    from matplotlib.lines import Line2D

    if not spec.points:
        raise UserError(f"{spec.title}: nothing to plot (no point has both a size and a quality value)")
    fig, ax = _figure((9.0, 5.0))
    series = list(dict.fromkeys(p.series for p in spec.points))
    groups = list(dict.fromkeys(p.group for p in spec.points))
    for p in spec.points:
        marker = MARKERS[groups.index(p.group) % len(MARKERS)]
        ax.scatter([p.x], [p.y], color=_colour(series.index(p.series)), marker=marker, s=36, zorder=3)
        if p.label:
            ax.annotate(p.label, (p.x, p.y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    for group in groups:
        front = pareto_front([p for p in spec.points if p.group == group])
        ax.step([p.x for p in front], [p.y for p in front], where="post", linestyle="--", color="0.25",
                linewidth=1.0, zorder=2)
    handles = [Line2D([], [], color=_colour(i), marker="o", linestyle="", label=name) for i, name in enumerate(series)]
    if len(groups) > 1:
        handles += [Line2D([], [], color="0.4", marker=MARKERS[j % len(MARKERS)], linestyle="", label=group)
                    for j, group in enumerate(groups)]
    front_label = "Pareto front" + (" (one per marker)" if len(groups) > 1 else "")
    handles.append(Line2D([], [], color="0.25", linestyle="--", linewidth=1.0, label=front_label))
    _log_x(ax)
    ax.set_xlabel(spec.xlabel + ", log scale")
    ax.set_ylabel(spec.ylabel)
    ax.set_title("\n".join([spec.title, *spec.notes]), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig


def bench_points(report: BenchReport, batch: int | None = None) -> tuple[list[Point], list[float], str]:
    """Per model (file size in KiB, quality in %) and its latency (ms) at ``batch`` (default: the first
    benchmarked batch size). Quality is accuracy when every model has one, else top-1 agreement with
    the first model. Returns (points, latencies, quality name); ``points[0]`` is the original."""
    batch = report.batches[0] if batch is None else batch
    if batch not in report.batches:
        raise UserError(f"--plot: batch {batch} was not benchmarked (batches {report.batches})")
    if all(m.accuracy is not None for m in report.models):
        quality, values = "accuracy", [m.accuracy for m in report.models]
    elif all(m.agreement is not None for m in report.models):
        quality, values = "top-1 agreement with the original", [m.agreement for m in report.models]
    else:
        raise UserError("--plot: the models' outputs are not comparable (no accuracy or agreement to plot)")
    points = [
        Point(m.file_bytes / 1024, 100 * v, "original" if i == 0 else "compressed", label=m.name)
        for i, (m, v) in enumerate(zip(report.models, values))
    ]
    latencies = [report.timing(i, batch).latency_ms for i in range(len(report.models))]
    return points, latencies, quality


def bench_figure(report: BenchReport, batch: int | None = None) -> Figure:
    """Quality vs file size, one point per model, coloured by latency at ``batch`` (colorbar); the
    original (first model) is a large star. See ``bench_points``."""
    points, latencies, quality = bench_points(report, batch)
    batch = report.batches[0] if batch is None else batch
    fig, ax = _figure((7.0, 4.8))
    kw = {"cmap": "viridis", "norm": _latency_norm(latencies), "zorder": 3}
    ax.scatter([p.x for p in points[1:]], [p.y for p in points[1:]], c=latencies[1:], marker="o", s=50,
               edgecolors="black", label="compressed", **kw)
    orig = ax.scatter([points[0].x], [points[0].y], c=latencies[:1], marker="*", s=260, edgecolors="red",
                      linewidths=1.5, label="original", **kw)
    ax.annotate(points[0].label, (points[0].x, points[0].y), textcoords="offset points", xytext=(-10, 8),
                ha="right", fontsize=7)  # the original is the largest file: its label goes left of the star
    for p in points[1:]:
        ax.annotate(p.label, (p.x, p.y), textcoords="offset points", xytext=(6, 4), fontsize=7)
    bar = fig.colorbar(orig, ax=ax)
    bar.set_label(f"latency at batch {batch} (ms, {report.provider}, {report.threads} thread(s))")
    _log_x(ax)
    ax.margins(x=0.1, y=0.1)  # room for the labels
    ax.set_xlabel("model file size (KiB, log scale)")
    ax.set_ylabel(f"{quality} (%)")
    data = f"{report.data}, {report.samples} samples" if report.data else "random inputs"
    ax.set_title(f"ttcompile bench: {quality} vs size vs latency ({data})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best", markerscale=0.7)
    fig.tight_layout()
    return fig


def write_png(fig: Figure, path: str | os.PathLike) -> Path:
    """Render ``fig`` as PNG and replace ``path`` atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return write_bytes_atomic(path, buf.getvalue())


def write_pareto(path: str | os.PathLike, spec: Pareto) -> Path:
    """``pareto_figure(spec)`` written to ``path`` (PNG, atomic)."""
    return write_png(pareto_figure(spec), path)


def _figure(size: tuple[float, float]):
    """A Figure on an Agg canvas (no pyplot, no global backend change) and its single Axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _colour(i: int):
    from matplotlib import colormaps

    """Series colour: tab10, then the light shades of tab20 (which tab10 lacks)."""
    return colormaps["tab10"](i) if i < 10 else colormaps["tab20"]((2 * (i - 10) + 1) % 20)


def _log_x(ax) -> None:
    """Log x axis with plain tick labels (``20``, ``1e+04``), minor ones too where few decades are shown."""
    from matplotlib.ticker import LogFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    ax.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1.5, 0.6)))


def _latency_norm(latencies: list[float]):
    """Colour scale of the latencies; a flat range is widened so equal latencies still get a colour."""
    from matplotlib.colors import Normalize

    low, high = min(latencies), max(latencies)
    return Normalize(low * 0.95, high * 1.05) if high - low < 1e-12 else Normalize(low, high)
