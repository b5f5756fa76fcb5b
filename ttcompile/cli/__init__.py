"""The command line: ``ttcompile.cli.main`` parses options and calls the library (see ``main``)."""

from ttcompile.cli.main import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "build_parser", "main"]
