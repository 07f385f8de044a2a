import numpy as np
import pytest

from draftvocab.analysis.plots import plot_pareto, plot_utility
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
