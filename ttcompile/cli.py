"""Command-line entry point. Each subcommand lives in its own module exposing
``add_arguments(parser)`` and ``run(args) -> int``; this file only wires them."""

from __future__ import annotations

import argparse
import importlib
import sys

from ttcompile.errors import UserError
from ttcompile.runtime import require_onnxruntime

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "inspect": ("ttcompile.cmd_inspect", "list compressible layers with params and MACs"),
    "compress": ("ttcompile.cmd_compress", "rewrite layers into tensor-decomposed chains"),
    "demo": ("ttcompile.cmd_demo", "compress and benchmark the embedded LeNet-5 (offline end-to-end run)"),
    "analyze": ("ttcompile.cmd_analyze", "LWIQ layer significance scores from calibration data (for --budget)"),
    "bench": ("ttcompile.cmd_bench", "compare models on ONNX Runtime: latency, params, MACs, accuracy"),
    "finetune": ("ttcompile.cmd_finetune", "distil the original into a compressed model's weights"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ttcompile", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        require_onnxruntime()  # a base install without a runtime flavour stops here, with the fix
        return int(importlib.import_module(args._module).run(args) or 0)
    except UserError as exc:
        print(f"ttcompile {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ttcompile {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
