"""Plain-text tables and number formatting for the terminal."""

from __future__ import annotations


def align(headers: list[str], rows: list[list[str]]) -> list[str]:
    """First column left-aligned, the others right-aligned, two spaces between columns."""
    widths = [max(len(r[c]) for r in [headers, *rows]) for c in range(len(headers))]
    return [
        "  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(r, widths)))
        for r in [headers, *rows]
    ]


def count(n: int | None) -> str:
    """Human count: 1234 -> '1.23k'; None -> '?'."""
    if n is None:
        return "?"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def ratio(before: int | None, after: int | None) -> str:
    """'12.3x' reduction, or '-' when unknown."""
    if not before or not after:
        return "-"
    return f"{before / after:.3g}x"
