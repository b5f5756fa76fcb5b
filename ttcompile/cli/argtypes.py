"""argparse ``type=`` checkers for numeric options: a bad value is one ``error:`` line naming the option
(argparse adds the option name), exit 2, before any work."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from ttcompile.feeds import MAX_BATCH

MAX_SECONDS = 3600.0


def _number(text: str, kind: type) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """Integers in ``[low, high]``."""
    def check(text: str) -> int:
        value = _number(text, int)
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(
                f"{value} is outside [{low}, {high if high is not None else 'inf'}]")
        return value
    check.__name__ = "integer"
    return check


def float_in(low: float, high: float | None = None, low_open: bool = True) -> Callable[[str], float]:
    """Finite numbers in ``(low, high]`` (``[low, high]`` when ``low_open`` is False)."""
    def check(text: str) -> float:
        value = _number(text, float)
        if value < low or (low_open and value == low) or (high is not None and value > high):
            bracket = "(" if low_open else "["
            raise argparse.ArgumentTypeError(
                f"{value:g} is outside {bracket}{low:g}, {high if high is not None else 'inf'}]")
        return value
    check.__name__ = "number"
    return check


positive_int = int_in(1)
count_int = int_in(0)
threads_int = int_in(0, 1024)
batch_int = int_in(1, MAX_BATCH)
positive_float = float_in(0.0)
