"""The summary table of a cost report, for the terminal."""
from __future__ import annotations

from ..dims import Sym
from ..passes.count_cost import CostReport


def human(n) -> str:
    """12_345_678 -> '12.35M'; symbolic sizes keep their symbols: '8.22G * B'."""
    if isinstance(n, Sym):
        parts = []
        for mono, coeff in sorted(n.terms, key=lambda t: (-len(t[0]), t[0])):
            syms = " * ".join(mono)
            parts.append(f"{human(coeff)} * {syms}" if syms else human(coeff))
        return " + ".join(parts)
    if abs(n) < 1000:
        return str(n)
    for unit, scale in (("T", 10**12), ("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)  # pragma: no cover


def summary_table(report: CostReport, dims: dict[str, int] | None = None):
    """A rich Table: one row per node, then the totals."""
    from rich.table import Table

    def subs(d):
        return d.subs(dims) if isinstance(d, Sym) and dims else d

    table = Table(title=f"{report.model}", show_footer=True, header_style="bold")
    table.add_column("path", footer="total")
    table.add_column("op")
    table.add_column("output shape")
    table.add_column("params", justify="right", footer=f"{report.params:,}")
    table.add_column("FLOPs", justify="right", footer=human(subs(report.flops)))
    for n in report.nodes:
        shapes = ", ".join(n.shapes)
        table.add_row(n.path, n.op + (" (shared)" if n.shared else ""), shapes,
                      f"{n.params:,}" if n.params else "", human(subs(n.flops)) if n.flops != 0 else "")
    return table
