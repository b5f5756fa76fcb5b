"""Pareto fronts and the Pareto figure of the benchmark result tables."""

from __future__ import annotations

import pytest

from ttcompile.benchmark.plot import Pareto, Point, pareto_figure, pareto_front, write_pareto, write_png
from ttcompile.errors import UserError


def test_front_keeps_only_undominated_points_sorted_by_x():
    pts = [Point(10, 0.9, "a"), Point(5, 0.8, "a"), Point(20, 0.85, "a"), Point(5, 0.7, "b"), Point(30, 0.95, "b")]
    assert [(p.x, p.y) for p in pareto_front(pts)] == [(5, 0.8), (10, 0.9), (30, 0.95)]
    assert pareto_front([Point(1, 1, "a"), Point(1, 1, "b")]) == [Point(1, 1, "a")]  # a tie keeps the first


def test_figure_draws_every_point_and_one_front_per_group(tmp_path):
    pts = [Point(1, 1, "tt", "m1"), Point(2, 2, "tr", "m1"), Point(3, 1.5, "tt", "m2", "x"), Point(4, 3, "tr", "m2")]
    fig = pareto_figure(Pareto(pts, "params", "accuracy (%)", "t"))
    ax = fig.axes[0]
    assert sum(len(c.get_offsets()) for c in ax.collections) == 4
    assert len(ax.lines) == 2 and [len(line.get_xdata()) for line in ax.lines] == [2, 2]
    assert [t.get_text() for t in ax.texts] == ["x"]
    out = write_png(fig, tmp_path / "p.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_empty_plot_refused():
    with pytest.raises(UserError, match="nothing to plot"):
        pareto_figure(Pareto([], "x", "y", "empty"))


def test_result_files_map_to_their_scripts_and_draw(tmp_path):
    import importlib
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    plot_results = importlib.import_module("plot_results")
    assert plot_results.script_of("allocators_resnet20_ft") == "allocators"
    assert plot_results.script_of("real_models") == "real_models" and plot_results.script_of("robustness") is None
    doc = json.loads((plot_results.RESULTS / "lenet5_mnist.json").read_text())
    spec = importlib.import_module("lenet5_mnist").pareto(doc)
    assert len(spec.points) == len(doc["rows"]) and [p.series for p in spec.points].count("original") == 1
    assert write_pareto(tmp_path / "p.png", spec).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
