"""Options shared by ``inspect`` and ``compress``: format, rank selection, modes, input shapes."""

from __future__ import annotations

import argparse
import json
import sys

from ttcompile.benchmark.tables import align, count, ratio
from ttcompile.errors import UserError
from ttcompile.planning.plan import Plan
from ttcompile.rewrite.factorize import parse_modes
from ttcompile.shapes import parse_input_shapes


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="input ONNX model (never modified)")
    p.add_argument("--format", default="tt",
                   help="decomposition format, or auto: per layer the lowest-error one (default: tt)")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--rank", type=int, help="uniform rank for every bond (clipped to each layer's caps)")
    sel.add_argument("--ratio", type=float, help="keep about this fraction of each layer's parameters, in (0, 1]")
    p.add_argument("--force", action="store_true", help="rewrite even layers whose decomposed form does not pay")
    p.add_argument("--allow-more-macs", action="store_true", help="accept rewrites that need more MACs than dense")
    p.add_argument("--modes", action="append", metavar="LAYER=IN:OUT",
                   help="override a layer's factorisation, e.g. fc1=5x5x5x10:5x8x8x1 (repeatable)")
    p.add_argument("--input-shape", action="append", metavar="NAME=DxD..",
                   help="fix dynamic input dims for shape inference, e.g. input=1x3x32x32")


def parse_mode_overrides(specs: list[str] | None) -> dict[str, dict]:
    out = {}
    for spec in specs or []:
        name, sep, rest = spec.partition("=")
        ins, sep2, outs = rest.partition(":")
        try:
            if not (sep and sep2 and name):
                raise ValueError
            out[name] = {"in": parse_modes(ins), "out": parse_modes(outs)}
        except ValueError:
            raise UserError(f"--modes {spec!r}: expected LAYER=IN:OUT such as fc1=5x5x5x10:5x8x8x1") from None
    return out


def plan_kwargs(args: argparse.Namespace) -> dict:
    """The planning keyword arguments of ``ttcompile.inspect``/``plan``/``compress`` these options ask for."""
    return dict(format=args.format, ratio=args.ratio, ranks=args.rank, modes=parse_mode_overrides(args.modes) or None,
                input_shapes=parse_input_shapes(args.input_shape), force=args.force,
                allow_more_macs=args.allow_more_macs)


def plan_table(plan: Plan) -> str:
    """One row per layer: shape, dense params/MACs, action, ranks, decomposed params/MACs, reason."""
    headers = ["layer", "kind", "weight", "params", "MACs", "action", "ranks", "params'", "MACs'", "P x", "M x",
               "rel.err", "note"]
    rows = []
    for lp in plan.layers:
        lay, compress = lp.layer, lp.action == "compress"
        action = f"{lp.action} {lp.format}" if compress and plan.settings.get("format") == "auto" else lp.action
        rows.append([
            lay.name, lay.kind, "x".join(map(str, lay.weight_shape)), count(lay.params), count(lay.macs), action,
            "-".join(map(str, lp.ranks)) if lp.ranks else "-",
            count(lp.params) if lp.params is not None else "-", count(lp.macs) if lp.macs is not None else "-",
            ratio(lay.params, lp.params) if compress else "-", ratio(lay.macs, lp.macs) if compress else "-",
            f"{lp.error:.2e}" if lp.error is not None else "-", lp.reason or "",
        ])
    t = plan.totals()
    rows.append(["total", "", "", count(t["params_before"]), count(t["macs_before"]), f"{t['compressed_layers']}",
                 "", count(t["params_after"]), count(t["macs_after"]), ratio(t["params_before"], t["params_after"]),
                 ratio(t["macs_before"], t["macs_after"]), "", "params/MACs of compressible layers, per sample"])
    return "\n".join(align(headers, rows))


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=1)
    sys.stdout.write("\n")
