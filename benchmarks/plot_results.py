"""Redraw the Pareto PNGs of benchmarks/results from their JSON files, without rerunning anything.

Each benchmark script with a quality-vs-size table has ``pareto(doc) -> ttcompile.benchmark.plot.Pareto`` and
writes ``results/STEM.png`` beside ``STEM.md`` itself; this script applies those same functions to
the stored JSON files (``STEM.json``, also variants such as ``allocators_resnet.json``).

    python benchmarks/plot_results.py [STEM ...]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ttcompile.benchmark.plot import write_pareto  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# the scripts with a Pareto plot; a JSON file belongs to the longest script name its stem starts with
SCRIPTS = ("allocators", "baselines", "formats", "latency_budget", "lenet5_mnist", "post_training", "real_models",
           "real_precision", "real_recovery")


def script_of(stem: str) -> str | None:
    """The script that wrote ``STEM.json`` (``allocators_resnet`` -> ``allocators``), None if it has no plot."""
    return max((s for s in SCRIPTS if stem == s or stem.startswith(s + "_")), key=len, default=None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stems", nargs="*", help="result stems to redraw (default: every JSON with a plot)")
    args = p.parse_args(argv)
    stems = args.stems or sorted(path.stem for path in RESULTS.glob("*.json") if script_of(path.stem))
    for stem in stems:
        script = script_of(stem)
        if script is None:
            raise SystemExit(f"{stem}: no benchmark script with a Pareto plot wrote it (known: {', '.join(SCRIPTS)})")
        doc = json.loads((RESULTS / f"{stem}.json").read_text())
        out = write_pareto(RESULTS / f"{stem}.png", importlib.import_module(script).pareto(doc))
        print(f"{out.relative_to(RESULTS.parent.parent)}: {out.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
