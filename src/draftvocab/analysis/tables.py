"""Markdown tables for the analysis artefacts (coverage.md, missing.md) and the CLI's
listings. Owns only the text layout; the numbers come from the other analysis modules.
"""

from __future__ import annotations

from typing import Any


def md_table(head: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured markdown table.

    Example:
        >>> print(md_table(["k", "C"], [[1, 0.5]]), end="")
        | k | C |
        |---|---|
        | 1 | 0.5 |
    """
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def pct(x: float | None) -> str:
    """A share as a percentage with two decimals; an em dash when unknown."""
    return "—" if x is None else f"{100 * x:.2f} %"


def sweep_table(rows: list[dict[str, Any]]) -> str:
    """k* of a sweep as a c_min × α grid (— where no k reaches c_min)."""
    a_list = sorted({r["alpha"] for r in rows})
    table = [[f"{cm:g}"] + [next((f"{r['k']:,}" if r["k"] else "—") for r in rows
                                 if r["alpha"] == a and r["c_min"] == cm) for a in a_list]
             for cm in sorted({r["c_min"] for r in rows})]
    return md_table(["c_min \\ α", *[f"{a:g}" for a in a_list]], table)
