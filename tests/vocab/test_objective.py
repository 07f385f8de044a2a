import numpy as np
import pytest

from draftvocab.core.errors import DraftVocabError
from draftvocab.vocab.flops import flops_breakdown
from draftvocab.vocab.objective import (
    Objective,
    coverage_curve,
    frequency_order,
    make_objective,
    utility_curve,
)

# d=8, H=2, I=8, V=4: fusion 2·3·8·8 = 384, attention q 256 + k,v 512 + o 128 = 896,
# MLP 3·2·8·8 = 384: fixed 1664; lm_head 16·k, total at V: 1728.
TINY = {"hidden_size": 8, "intermediate_size": 8, "num_attention_heads": 2, "vocab_size": 4}


def test_frequency_order_breaks_ties_by_id():
    order = frequency_order(np.array([3, 1, 3, 0, 2]))
    assert order.dtype == np.int64
    np.testing.assert_array_equal(order, [0, 2, 4, 1, 3])
    np.testing.assert_array_equal(frequency_order(np.array([0, 0, 0])), [0, 1, 2])
    np.testing.assert_array_equal(frequency_order(np.array([1, 7, 7], np.uint32)), [1, 2, 0])


def test_coverage_curve_by_hand():
    c = coverage_curve(np.array([1, 3, 0, 4]))
    assert c.dtype == np.float64
    np.testing.assert_array_equal(c, [0.0, 0.5, 0.875, 1.0, 1.0])


def test_coverage_curve_rejects_bad_counts():
    with pytest.raises(DraftVocabError, match="sum to zero"):
        coverage_curve(np.zeros(5, dtype=np.int64))
    with pytest.raises(DraftVocabError, match="non-negative"):
        coverage_curve(np.array([3, -1]))
    with pytest.raises(DraftVocabError, match="1-D"):
        coverage_curve(np.ones((2, 2)))
    with pytest.raises(DraftVocabError, match="NaN"):
        coverage_curve(np.array([1.0, np.nan]))


def test_utility_curve_penalty_and_weights():
    cov = np.array([0.0, 0.5, 0.9, 1.0])
    red = np.array([0.6, 0.4, 0.2, 0.0])
    u = utility_curve(cov, red, alpha=0.25, c_min=0.9)
    # C = c_min exactly is feasible: 0.25·0.9 + 0.75·0.2 = 0.375
    np.testing.assert_allclose(u, [-1.0, -1.0, 0.375, 0.25])
    np.testing.assert_allclose(utility_curve(cov, red, 1.0, 0.0), cov)
    np.testing.assert_allclose(utility_curve(cov, red, 0.0, 0.0), red)


@pytest.mark.parametrize(
    ("alpha", "c_min", "message"),
    [
        (1.5, 0.9, r"alpha must be in \[0, 1\], got 1.5"),
        (-0.1, 0.9, r"alpha must be in \[0, 1\], got -0.1"),
        (0.5, 1.01, r"c_min must be in \[0, 1\], got 1.01"),
        (float("nan"), 0.9, r"alpha must be in \[0, 1\], got nan"),
    ],
)
def test_utility_curve_validates(alpha, c_min, message):
    with pytest.raises(DraftVocabError, match=message):
        utility_curve(np.zeros(2), np.zeros(2), alpha, c_min)


def test_make_objective_by_hand():
    flops = flops_breakdown(TINY)
    assert (flops.fixed, flops.lm_head(1)) == (1664, 16)
    obj = make_objective(np.array([4, 3, 2, 1]), flops, alpha=0.5, c_min=0.7)
    assert isinstance(obj, Objective)
    assert obj.vocab_size == 4
    np.testing.assert_allclose(obj.coverage, [0, 0.4, 0.7, 0.9, 1.0])
    # R(k) = 1 − (1664 + 16k) / 1728
    np.testing.assert_allclose(obj.reduction, 1 - (1664 + 16 * np.arange(5)) / 1728)
    c, r, u = obj.evaluate(2)
    assert c == pytest.approx(0.7)
    assert r == pytest.approx(32 / 1728)
    assert u == pytest.approx(0.5 * 0.7 + 0.5 * 32 / 1728)
    assert obj.evaluate(1)[2] == -1.0
    assert obj.utility.shape == (5,)
    with pytest.raises(DraftVocabError, match=r"k must be in \[0, V=4\]"):
        obj.evaluate(5)


def test_make_objective_vocab_mismatch():
    with pytest.raises(DraftVocabError, match="5 ids but the model vocab_size is 4"):
        make_objective(np.ones(5), flops_breakdown(TINY), 0.5, 0.9)


def test_objective_validates_alpha():
    with pytest.raises(DraftVocabError, match="alpha"):
        make_objective(np.ones(4), flops_breakdown(TINY), 2.0, 0.9)
