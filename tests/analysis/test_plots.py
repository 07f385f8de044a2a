import numpy as np
import pytest

from draftvocab.analysis.plots import (
    plot_ceiling,
    plot_pareto,
    plot_tau_curves,
    plot_utility,
    tokens_for_tau,
)
from draftvocab.vocab.flops import flops_breakdown
from draftvocab.vocab.objective import make_objective
from draftvocab.vocab.optimize import optimize_objective

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def objective():
    vocab = 5000
    counts = (1e6 / np.arange(1, vocab + 1) ** 1.1).astype(np.int64)  # Zipf
    flops = flops_breakdown(
        {
            "hidden_size": 256,
            "intermediate_size": 512,
            "num_attention_heads": 4,
            "vocab_size": vocab,
        }
    )
    return make_objective(np.random.default_rng(0).permutation(counts), flops, 0.5, 0.8)


def _is_png(path):
    data = path.read_bytes()
    return data[:8] == PNG_MAGIC and len(data) > 5000


@pytest.mark.parametrize("solver", ["both", "exact"])
def test_plots_write_png(tmp_path, objective, solver):
    import matplotlib.pyplot as plt

    result = optimize_objective(objective, solver=solver, n_trials=15, seed=0)
    u = plot_utility(objective, result, tmp_path / "utility.png")
    p = plot_pareto(objective, result, tmp_path / "figs" / "pareto.png")
    assert u == tmp_path / "utility.png" and _is_png(u)
    assert p == tmp_path / "figs" / "pareto.png" and _is_png(p)
    # Atomic writes leave no temp files behind, and nothing leaks into pyplot's state.
    assert sorted(f.name for f in tmp_path.rglob("*") if f.is_file()) == [
        "pareto.png",
        "utility.png",
    ]
    assert plt.get_fignums() == []


def test_tokens_for_tau_inverts_a_log_linear_curve():
    tokens = [1e4, 3e4, 1e5, 3e5]
    taus = [1.0 + 0.1 * np.log10(t) for t in tokens]  # +0.1 per decade
    assert tokens_for_tau(tokens, taus, 1.0 + 0.1 * 7) == pytest.approx(1e7, rel=1e-6)
    assert tokens_for_tau(tokens, taus[::-1], 2.0) is None  # falling: never


def test_plot_ceiling(tmp_path):
    evals = [{"tokens": t, "tau": 1.0 + 0.05 * np.log10(max(t, 1)), "gamma": 2}
             for t in (0, 3e4, 1e5, 3e5)]
    path = plot_ceiling(evals, {"fixed": 1.27}, {"fixed": 1.47, "adaptive": 1.38},
                        tmp_path / "ceiling.png")
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_plot_tau_curves_writes_one_png(tmp_path):
    curves = {"runs/a/draft": [(3e5, 1.3), (1e5, 1.2)], "runs/b/draft": [(2e5, 1.25)]}
    path = plot_tau_curves(curves, tmp_path / "curves.png", gamma=2)
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]  # no temp sibling left
