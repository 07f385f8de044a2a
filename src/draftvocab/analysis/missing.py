"""The missing-tokens report: per evaluation set, the most frequent tokens a vocabulary cannot
emit, as JSON-ready rows and markdown. The counting is `coverage.missing_tokens`; this module
only assembles sets (adding "all" when there are several) and lays out the text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from draftvocab.analysis.coverage import missing_tokens
from draftvocab.analysis.tables import md_table, pct


def missing_report(groups: dict[str, Any], t2d: np.ndarray, top: int,
                   decode: Callable[[list[int]], list[str]],
                   label: str) -> tuple[dict[str, Any], str]:
    """({"vocabulary", "sets": {name: [{id, text, count, share}]}}, markdown) for the
    counts of each evaluation set."""
    if len(groups) > 1:
        groups = {**groups, "all": sum(groups.values())}
    result = {"vocabulary": label, "sets": {
        name: [m.__dict__ for m in missing_tokens(c, t2d, top, decode)]
        for name, c in groups.items()}}
    md = [f"Vocabulary: {label}\n"]
    for name, items in result["sets"].items():
        md.append(f"### {name}\n")
        md.append(md_table(["id", "text", "count", "share of the set's tokens"],
                           [[m["id"], repr(m["text"]).replace("|", "\\|"),
                             f"{m['count']:,}", pct(m["share"])] for m in items]))
    return result, "\n".join(md)
