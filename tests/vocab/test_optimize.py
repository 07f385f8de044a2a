import json

import numpy as np
import pytest

from draftvocab.core.errors import DraftVocabError
from draftvocab.vocab.flops import flops_breakdown
from draftvocab.vocab.objective import make_objective
from draftvocab.vocab.optimize import OptimizeResult, optimize_objective, optimize_vocab


def _flops(vocab: int):
    return flops_breakdown(
        {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "vocab_size": vocab}
    )


@pytest.fixture(scope="module")
def zipf():
    rng = np.random.default_rng(1)
    vocab = 3000
    counts = rng.permutation((1e6 / np.arange(1, vocab + 1) ** 1.2).astype(np.int64))
    return counts, _flops(vocab)


def test_exact_matches_brute_force():
    rng = np.random.default_rng(7)
    vocab = 300
    counts = rng.integers(0, 50, size=vocab)
    flops = _flops(vocab)
    alpha, c_min = 0.6, 0.8
    ranked = np.sort(counts)[::-1]
    best_k, best_u = None, -np.inf
    for k in range(1, vocab + 1):  # the obvious, slow definition
        cov = ranked[:k].sum() / counts.sum()
        red = 1 - (flops.fixed + 2 * 64 * k) / (flops.fixed + 2 * 64 * vocab)
        u = alpha * cov + (1 - alpha) * red if cov >= c_min else -1.0
        if u > best_u + 1e-15:
            best_k, best_u = k, u
    res = optimize_vocab(counts, flops, alpha=alpha, c_min=c_min, solver="exact")
    assert res.chosen.k == best_k
    assert res.chosen.utility == pytest.approx(best_u, abs=1e-12)
    assert res.chosen.coverage >= c_min
    assert res.exact is res.chosen and res.tpe is None and res.tpe_regret is None
    assert [t.k for t in res.exact.trials] == [best_k]


def test_alpha_zero_picks_smallest_feasible_k():
    # C = 0.4, 0.7, 0.9, 1.0: with only latency in U, k* is the first k with C ≥ c_min.
    counts = np.array([1, 4, 2, 3])
    res = optimize_vocab(counts, _flops(4), alpha=0.0, c_min=0.7, solver="exact")
    assert res.chosen.k == 2
    assert res.chosen.coverage == pytest.approx(0.7)
    assert optimize_vocab(counts, _flops(4), alpha=0.0, c_min=0.71, solver="exact").chosen.k == 3


def test_ties_go_to_smallest_k():
    # α = 1 makes U = C, which is 1.0 from k = 3 (the nonzero tokens) to V.
    counts = np.array([0, 5, 0, 2, 0, 1, 0, 0])
    res = optimize_vocab(counts, _flops(8), alpha=1.0, c_min=0.0, solver="exact")
    assert res.chosen.k == 3
    assert res.chosen.utility == 1.0


def test_k_window_is_respected(zipf):
    counts, flops = zipf
    free = optimize_vocab(counts, flops, c_min=0.5, solver="exact").chosen.k
    assert 10 < free < 2000
    low = optimize_vocab(counts, flops, c_min=0.5, k_min=free + 100, solver="exact")
    assert low.chosen.k == free + 100
    high = optimize_vocab(counts, flops, c_min=0.5, k_min=1, k_max=free - 5, solver="exact")
    assert high.chosen.k == free - 5
    assert (high.k_min, high.k_max) == (1, free - 5)


def test_unreachable_c_min_names_best_coverage():
    counts = np.array([4, 3, 2, 1])
    with pytest.raises(
        DraftVocabError,
        match=r"c_min=0.95 is unreachable: the best coverage with k ≤ 3 is "
        r"0\.9000 \(k=3\)",
    ):
        optimize_vocab(counts, _flops(4), c_min=0.95, k_max=3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k_min": 0}, r"k must be in \[1, V=4\], got k_min=0"),
        ({"k_max": 5}, r"k must be in \[1, V=4\], got k_max=5"),
        ({"k_min": 3, "k_max": 2}, "k_min=3 is larger than k_max=2"),
        ({"n_trials": 0}, "n_trials must be at least 1"),
        ({"solver": "grid"}, "solver must be one of exact, tpe, both"),
        ({"alpha": 1.5}, r"alpha must be in \[0, 1\], got 1.5"),
        ({"c_min": -0.5}, r"c_min must be in \[0, 1\], got -0.5"),
        ({"k_min": 1.5}, "k_min must be an integer"),
    ],
)
def test_validation(kwargs, message):
    with pytest.raises(DraftVocabError, match=message):
        optimize_vocab(np.array([4, 3, 2, 1]), _flops(4), **kwargs)


def test_tpe_deterministic_per_seed_and_regret(zipf):
    counts, flops = zipf
    obj = make_objective(counts, flops, 0.5, 0.8)
    a = optimize_objective(obj, n_trials=25, seed=3)
    b = optimize_objective(obj, n_trials=25, seed=3)
    c = optimize_objective(obj, n_trials=25, seed=4)
    ks_a = [t.k for t in a.tpe.trials]
    assert ks_a == [t.k for t in b.tpe.trials]
    assert ks_a != [t.k for t in c.tpe.trials]
    assert len(ks_a) == 25 and [t.number for t in a.tpe.trials] == list(range(25))
    assert all(1 <= k <= 3000 for k in ks_a)
    # "both" reports exact's k*; TPE can only match or trail it.
    assert a.chosen is a.exact
    assert a.tpe_regret == pytest.approx(a.exact.utility - a.tpe.utility)
    assert a.tpe_regret >= 0
    best = max(a.tpe.trials, key=lambda t: t.utility)
    assert a.tpe.k == best.k and a.tpe.utility == best.utility
    for t in a.tpe.trials:
        assert t.feasible == (t.coverage >= 0.8)
        assert t.utility == (obj.utility[t.k])


def test_tpe_only_and_progress(zipf):
    counts, flops = zipf
    calls = []
    res = optimize_vocab(
        counts, flops, solver="tpe", n_trials=12, seed=0, progress=lambda d, n: calls.append((d, n))
    )
    assert calls == [(i, 12) for i in range(1, 13)]
    assert res.exact is None and res.chosen is res.tpe and res.tpe_regret is None
    assert res.chosen.solver == "tpe"


def test_to_json_and_trials_table(zipf):
    counts, flops = zipf
    res = optimize_vocab(counts, flops, n_trials=10, seed=0)
    assert isinstance(res, OptimizeResult)
    data = json.loads(json.dumps(res.to_json()))
    assert data["k"] == res.exact.k
    assert data["solver"] == "exact"
    assert data["vocab_size"] == 3000 and data["n_trials"] == 10
    assert data["tpe_regret"] == pytest.approx(res.tpe_regret)
    assert "trials" not in data["exact"] and "trials" not in data["tpe"]
    rows = res.trials_table()
    assert [r["solver"] for r in rows] == ["exact"] + ["tpe"] * 10
    assert set(rows[0]) == {"solver", "number", "k", "coverage", "reduction", "utility", "feasible"}
    json.dumps(rows)


def test_exact_on_qwen_sized_vocab_is_a_slice_argmax():
    # V = 151,936 (Qwen2.5): the exact solve must not evaluate k one by one.
    vocab = 151_936
    counts = (1e8 / np.arange(1, vocab + 1)).astype(np.int64)
    res = optimize_vocab(counts, _flops(vocab), solver="exact")
    obj = make_objective(counts, _flops(vocab), 0.5, 0.9)
    assert res.chosen.k == int(np.argmax(obj.utility[1:])) + 1
    assert len(res.exact.trials) == 1
