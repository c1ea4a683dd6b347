"""Plain-text tables for the terminal (no dependency; right-aligned numbers)."""

from __future__ import annotations

from collections.abc import Sequence


def render(headers: Sequence[str], rows: Sequence[Sequence[object]], *, align: str | None = None) -> str:
    """`align` has one char per column: 'l' or 'r' (default: numbers right, text left)."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    if align is None:
        align = "".join("r" if rows and all(_is_num(r[i]) for r in rows) else "l" for i in range(len(headers)))

    def line(values: Sequence[str]) -> str:
        out = [v.rjust(w) if a == "r" else v.ljust(w) for v, w, a in zip(values, widths, align)]
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep, *(line(r) for r in cells)])


def _is_num(x: object) -> bool:
    return isinstance(x, (int, float)) or (isinstance(x, str) and x.replace(".", "", 1).replace("inf", "1").isdigit())


def _fmt(x: object) -> str:
    if isinstance(x, float):
        if x == float("inf"):
            return "inf"
        return f"{x:.0f}" if x.is_integer() else f"{x:.2f}"
    return "" if x is None else str(x)
