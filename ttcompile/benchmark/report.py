"""Render a BenchReport: aligned terminal tables and an atomically written JSON file."""

from __future__ import annotations

import json
import os

from ttcompile.atomic import write_bytes_atomic
from ttcompile.benchmark.bench import ROUND_QUANTILE, BenchReport
from ttcompile.benchmark.tables import align, count


def format_table(report: BenchReport) -> str:
    """Two aligned tables: per-model cost and quality, then latency per model and batch size.

    Ratios compare with the first model: first / this, so higher is better.
    """
    models = [
        [
            m.name,
            count(m.params),
            count(m.macs_per_sample),
            _bytes(m.file_bytes),
            _pct(m.accuracy),
            _pct(m.agreement),
            _x(report.params_reduction(i)),
            _x(report.macs_reduction(i)),
        ]
        for i, m in enumerate(report.models)
    ]
    timings = [
        [
            report.models[t.model].name,
            str(t.batch),
            f"{t.latency_ms:.4g}",
            f"{t.median_ms:.4g}",
            f"{t.p90_ms:.4g}",
            f"{t.throughput:,.0f}",
            _x(report.speedup(t.model, t.batch)),
        ]
        for t in sorted(report.timings, key=lambda t: (t.batch, t.model))
    ]
    data = f"data {report.data} ({report.samples} samples)" if report.data else "random inputs"
    header = [
        f"{report.provider}, {report.threads} thread(s), {data}; ratios = first model / this model",
        f"latency: median over {report.rounds} interleaved rounds of each round's p{ROUND_QUANTILE} run; "
        "median, p90: all timed runs",
    ]
    lines = [
        *header,
        "",
        *align(["model", "params", "MACs/sample", "size", "accuracy", "agree", "params x", "MACs x"], models),
        "",
        *align(["model", "batch", "latency ms", "median ms", "p90 ms", "samples/s", "speedup"], timings),
    ]
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


def write_json(report: BenchReport, path: str | os.PathLike) -> None:
    """Write ``report.to_dict()`` as JSON; the file is replaced atomically (never left half-written)."""
    write_bytes_atomic(path, (json.dumps(report.to_dict(), indent=2) + "\n").encode())


def _bytes(n: int) -> str:
    for div, unit in ((2**20, "MiB"), (2**10, "KiB")):
        if n >= div:
            return f"{n / div:.3g} {unit}"
    return f"{n} B"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _x(v: float | None) -> str:
    return "?" if v is None else f"{v:.3g}x"
