"""``ttcompile bench``: compare models on ONNX Runtime (latency, cost, accuracy vs the first model)."""

from __future__ import annotations

import argparse

import ttcompile
from ttcompile.cli.argtypes import MAX_SECONDS, float_in, int_in, threads_int
from ttcompile.feeds import MAX_BATCH
from ttcompile.paths import check_outputs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "models", nargs="+", metavar="MODEL", help=".onnx files; the first one is the reference"
    )
    parser.add_argument(
        "--data",
        metavar="D",
        help="path.npz | mnist[:split] | digits[:split]; accuracy needs labels. Batches larger than the "
        "data set wrap around to its start. Default: seeded random inputs, no accuracy",
    )
    parser.add_argument("--provider", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=_batches,
                        help="comma-separated batch sizes (default 1,32,256; a model's fixed batch if it has one)")
    parser.add_argument("--threads", type=threads_int, default=1, help="ORT intra-op threads (0 = ORT default)")
    parser.add_argument(
        "--repeats", type=int_in(1, 1000), default=5, help="interleaved rounds per model (median reported)"
    )
    parser.add_argument(
        "--min-time", type=float_in(0.0, MAX_SECONDS, low_open=False), default=0.25,
        help="seconds of timed runs per batch size and round"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.add_argument("--json", metavar="OUT", help="also write the full report as JSON")
    parser.add_argument("--plot", metavar="PNG", help="also draw accuracy (or agreement) vs file size, coloured by "
                        "latency at the first --batch size, as a PNG")


def run(args: argparse.Namespace) -> int:
    from ttcompile.benchmark.report import format_table, write_json

    check_outputs([*(("MODEL", m) for m in args.models), ("--data", args.data)],
                  [("--json", args.json), ("--plot", args.plot)])
    report = ttcompile.bench(args.models, args.data, provider=args.provider, batches=args.batch,
                             threads=args.threads, rounds=args.repeats, min_time=args.min_time, seed=args.seed,
                             progress=True)
    print(format_table(report))
    for line in _latency_checks(report, args.models):
        print(line)
    if args.json:
        write_json(report, args.json)
    if args.plot:
        from ttcompile.benchmark.plot import bench_figure, write_png

        write_png(bench_figure(report), args.plot)
    return 0


def _latency_checks(report, models: list[str]) -> list[str]:
    """Predicted vs measured latency for each model whose plan (``OUT.plan.json``) has a latency budget."""
    import json

    from ttcompile.planning.latency import budget_checks
    from ttcompile.rewrite.pipeline import plan_path

    plans = {}
    for i, path in enumerate(models[1:], start=1):
        try:
            plans[i] = json.loads(plan_path(path).read_text()).get("settings") or {}
        except (OSError, ValueError, AttributeError):
            continue  # no plan beside it (or not ours): nothing to check
    return budget_checks(report, plans)


def _batches(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1 or max(values) > MAX_BATCH:
        raise argparse.ArgumentTypeError(
            f"expected integers in [1, {MAX_BATCH}] separated by commas, got {text!r}")
    return values
