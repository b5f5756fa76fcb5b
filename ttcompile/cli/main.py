"""Command-line entry point. Each subcommand lives in its own module exposing
``add_arguments(parser)`` and ``run(args) -> int``; this file only wires them.

Exit status: 0 success, 2 bad input (one line naming the file, node or option), 3 the compressed
model failed verification (nothing written), 130 interrupted."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ttcompile.errors import EXIT_USER, EXIT_VERIFY, UserError, VerificationError, cli_text
from ttcompile.runtime import require_onnxruntime

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "inspect": ("ttcompile.cli.cmd_inspect", "list compressible layers with params and MACs"),
    "compress": ("ttcompile.cli.cmd_compress", "rewrite layers into tensor-decomposed chains"),
    "demo": ("ttcompile.cli.cmd_demo", "compress and benchmark the embedded LeNet-5 (offline end-to-end run)"),
    "analyze": ("ttcompile.cli.cmd_analyze", "LWIQ layer significance scores from calibration data (for --budget)"),
    "bench": ("ttcompile.cli.cmd_bench", "compare models on ONNX Runtime: latency, params, MACs, accuracy"),
    "finetune": ("ttcompile.cli.cmd_finetune", "distil the original into a compressed model's weights"),
}


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (``PROG: error: ...``, exit 2), not the usage block."""

    def error(self, message: str):
        self.exit(EXIT_USER, f"{self.prog}: error: {_one_line(message)} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ttcompile", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def _one_line(exc: Exception) -> str:
    text = exc.cli_message() if isinstance(exc, (UserError, VerificationError)) else str(exc)
    return " ".join(text.split("\n"))


class _Stdout(logging.Handler):
    """The library's log lines (``logging``, logger ``ttcompile``) printed to the current stdout."""

    def emit(self, record: logging.LogRecord) -> None:
        print(cli_text(self.format(record)), flush=True)


def main(argv: list[str] | None = None) -> int:
    prog = "ttcompile"
    logger, handler = logging.getLogger("ttcompile"), _Stdout()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help, or a usage error already printed
            return int(exc.code or 0)
        prog = f"ttcompile {args.command}"
        require_onnxruntime()  # a base install without a runtime flavour stops here, with the fix
        return int(importlib.import_module(args._module).run(args) or 0)
    except UserError as exc:
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USER
    except VerificationError as exc:
        print(f"{prog}: verification failed: {_one_line(exc)}", file=sys.stderr)
        return EXIT_VERIFY
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


if __name__ == "__main__":
    sys.exit(main())
