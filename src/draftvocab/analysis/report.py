"""One self-contained HTML page for an `optimize` run: the choice (k*, C, R, U), the FLOPs table,
utility and Pareto plots, and whatever analyses were run into `RUN/analysis/` (coverage,
missing tokens, stability, the α × c_min sweep). Images are embedded as data URIs, so the file
can be mailed or attached to an issue as it is.

Owns only the page: it reads the run directory `artefacts.py` writes and the analyses' JSON
and PNG files; it computes nothing itself.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from draftvocab.core.errors import DraftVocabError

_CSS = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 3px 9px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.kpi { display: flex; gap: 1.2em; flex-wrap: wrap; margin: 1em 0; }
.kpi div { background: #f6f8fa; border: 1px solid #ddd; border-radius: 6px; padding: 0.6em 1em; }
.kpi b { display: block; font-size: 22px; } img { max-width: 100%; } code { color: #a33; }
.muted { color: #777; }
"""


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _table(head: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.2f} %"


def _load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def build_report(run: str | Path) -> str:
    """The HTML text of the report for `run` (an `optimize` output directory)."""
    run = Path(run)
    summary = _load(run / "summary.json")
    if not summary:
        raise DraftVocabError(f"{run} is not an `optimize` output directory (no summary.json)")
    analysis = run / "analysis"
    parts = [f"<h1>draftvocab report</h1><p class=muted>{html.escape(str(run.resolve()))}</p>"]
    inputs = summary.get("inputs") or {}
    parts.append(
        '<div class="kpi">'
        f"<div>k*<b>{summary['k']:,}</b>of V = {summary['vocab_size']:,}</div>"
        f"<div>coverage C(k*)<b>{_pct(summary['coverage'])}</b>c_min = {summary['c_min']}</div>"
        f"<div>latency reduction R(k*)<b>{_pct(summary['reduction'])}</b>FLOPs model</div>"
        f"<div>utility U(k*)<b>{summary['utility']:.4f}</b>α = {summary['alpha']}</div>"
        f"<div>TPE regret<b>{summary.get('tpe_regret') or 0:.2e}</b>vs exact</div></div>")
    parts.append("<p>" + html.escape(
        f"preset {inputs.get('preset')}, {inputs.get('conversations') or 0:,} conversations, "
        f"{inputs.get('supervised_tokens') or 0:,} supervised tokens; solver "
        f"{summary['solver']}.") + "</p>")
    f = summary.get("flops") or {}
    if f:
        total = f["total"]
        rows = [[name, f"{f[key]:,}", _pct(f[key] / total)] for name, key in
                (("feature fusion (fc)", "fusion"), ("attention", "attention"), ("MLP", "mlp"),
                 ("LM head (k = V)", "lm_head"))]
        rows.append(["total (k = V)", f"{total:,}", "100.00 %"])
        rows.append([f"total at k* = {summary['k']:,}", f"{f['draft_total_at_k']:,}",
                     _pct(f["draft_total_at_k"] / total)])
        parts.append("<h2>Draft FLOPs per token</h2>" + _table(["component", "FLOPs", "share"],
                                                                rows))
    plots = [p for p in (run / "utility.png", run / "pareto.png") if p.is_file()]
    if plots:
        parts.append("<h2>Utility and Pareto front</h2>" + "".join(_img(p) for p in plots))
    cov = _load(analysis / "coverage.json")
    if cov:
        train = any(r.get("train_share") is not None for r in cov["rows"])
        head = ["set", "tokens", "coverage", "unique tokens", "unique coverage"]
        head += ["share of training tokens"] if train else []
        rows = [[r["name"], f"{r['tokens']:,}", _pct(r["coverage"]), f"{r['unique_tokens']:,}",
                 _pct(r["unique_coverage"])] + ([_pct(r.get("train_share"))] if train else [])
                for r in cov["rows"]]
        parts.append(f"<h2>Coverage on evaluation data</h2><p>{html.escape(cov['vocabulary'])}"
                     "</p>" + _table(head, rows))
    missing = _load(analysis / "missing.json")
    if missing:
        parts.append("<h2>Most frequent missing tokens</h2>")
        for name, items in missing["sets"].items():
            rows = [[m["id"], repr(m["text"]), f"{m['count']:,}", _pct(m["share"])]
                    for m in items]
            parts.append(f"<h3>{html.escape(name)}</h3>"
                         + _table(["id", "text", "count", "share of tokens"], rows))
    stab = _load(analysis / "stability.json")
    if stab:
        rows = [[f"{p['size']:,}", f"{p['mean']:,.0f}", f"{p['std']:,.0f}", f"{p['min']:,}",
                 f"{p['max']:,}"] for p in stab["points"]]
        stable = stab.get("stable_from")
        note = (f"within ±{stab['tolerance']:.0%} of k* on all data from {stable:,} "
                "conversations on" if stable else "not yet within tolerance below all the data")
        parts.append("<h2>Stability of k* with the amount of data</h2>"
                     f"<p>{html.escape(note)}</p>"
                     + (_img(analysis / "stability.png")
                        if (analysis / "stability.png").is_file() else "")
                     + _table(["conversations", "mean k*", "std", "min", "max"], rows))
    sweep = _load(analysis / "sweep.json")
    if sweep:
        parts.append("<h2>k* over α and c_min</h2>"
                     + (_img(analysis / "sweep.png") if (analysis / "sweep.png").is_file()
                        else ""))
    if not any((cov, missing, stab, sweep)):
        parts.append("<p class=muted>No analyses in RUN/analysis yet: run <code>draftvocab "
                     "coverage</code>, <code>missing</code>, <code>stability</code> or "
                     "<code>sweep</code> with <code>-o RUN/analysis</code>.</p>")
    body = "\n".join(parts)
    return (f"<!doctype html><html><head><meta charset=utf-8><title>draftvocab report"
            f"</title><style>{_CSS}</style></head><body>{body}</body></html>\n")
