"""Measured latency model, acceptance calibration and the predicted-speed objective: formulas on
hand-made numbers, and the latency / calibrate / optimize --objective speedup commands on a tiny
real target."""

from __future__ import annotations

import json

import numpy as np
import pytest

from draftvocab.engine.drafters import DraftConfig, Eagle3Draft, save_draft
from draftvocab.engine.latency import (
    LatencyModel,
    acceptance_from_lengths,
    fastest_multiple,
    measure_latency,
    predict_speed,
)
from draftvocab.vocab.counts import TokenCounts
from tests.cli.test_cli import fail, ok_json

TINY = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 1000, "num_hidden_layers": 4}


def test_latency_model_interpolates_and_flags_tiling():
    m = LatencyModel.from_json({"ks": [100, 10, 1000, 500], "seconds": [2.0, 1.0, 5.0, 1.5],
                                "vocab_size": 1000})
    assert m(55) == pytest.approx(1.5)  # halfway between k = 10 and 100
    assert m(1000) == pytest.approx(5.0)
    assert m(5) == pytest.approx(1.0)  # flat below the grid
    assert m(1100) == pytest.approx(5.0 + 100 * 3.5 / 500)  # linear above it
    r = m.reduction()
    assert r.shape == (1001,) and r[1000] == 0 and r[10] == pytest.approx(0.8)
    # k = 500 is faster than k = 100: a tiling anomaly
    assert m.anomalies() == [{"k": 500, "seconds": 1.5, "slower_smaller_k": 100,
                              "its_seconds": 2.0}]
    fixed, per_row = LatencyModel.from_json({"ks": [0, 10], "seconds": [1.0, 3.0],
                                             "vocab_size": 10}).linear_fit()
    assert (fixed, per_row) == pytest.approx((1.0, 0.2))


def test_fastest_multiple_rounds_up_only():
    times = {1000: 3.0, 1008: 2.0, 1024: 2.5}
    res = fastest_multiple(1000, lambda ks: [times.get(k, 4.0) for k in ks], up_to=0.03)
    assert res["candidates"] == [1000, 1008, 1024] and res["fastest"] == 1008
    assert res["saving"] == pytest.approx(1 / 3)


def test_acceptance_and_predicted_speed_by_hand():
    # gamma 2: forwards gained 1 (nothing accepted), 2 (one), 3 (both)
    alphas = acceptance_from_lengths([1, 2, 3, 3], 2)
    assert alphas == pytest.approx([3 / 4, 2 / 3])
    pred = predict_speed(np.array([1.0, 0.5]), np.array([0.01, 0.002]), 0.05, [0.8, 0.5])
    # full coverage: tau = 1 + .8 + .8*.5 = 2.2 over 0.05 + 2*0.01 s
    assert pred["tau"][0] == pytest.approx(2.2)
    assert pred["tokens_per_s"][0] == pytest.approx(2.2 / 0.07)
    # half coverage: tau = 1 + .4 + .4*.25 = 1.5 over 0.054 s
    assert pred["tokens_per_s"][1] == pytest.approx(1.5 / 0.054)
    # a prompt forward costing 5 ms per generated token, the same for every k
    e2e = predict_speed(np.array([1.0]), np.array([0.01]), 0.05, [0.8, 0.5],
                        prefill_per_token=0.005)
    assert e2e["tokens_per_s"][0] == pytest.approx(1 / (0.07 / 2.2 + 0.005))


def test_measure_latency_on_a_tiny_config():
    res = measure_latency(TINY, [10, 1000], width=2, prefix=8, repeats=2)
    assert res["ks"] == [10, 1000] and all(t > 0 for t in res["seconds"])
    assert res["vocab_size"] == 1000


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_target):
    root = tmp_path_factory.mktemp("lat")
    tiny_target.model.save_pretrained(str(root / "target"))
    tiny_target.tokenizer.save_pretrained(str(root / "target"))
    draft = Eagle3Draft(DraftConfig.for_target(tiny_target),
                        tiny_target.model.get_input_embeddings())
    save_draft(draft, root / "draft")
    counts = np.zeros(tiny_target.vocab_size, dtype=np.int64)
    counts[:3000] = np.arange(3000, 0, -1)
    TokenCounts(counts).save(root / "counts.safetensors")
    return root


def test_latency_calibrate_and_speedup_commands(tiny_run):
    cfg = tiny_run / "target" / "config.json"
    tok = ("--tokenizer", tiny_run / "target")
    lat = ok_json("latency", "--config", cfg, "--ks", "64,4096,49152", "--repeats", 2,
                  "--round", 4000, "-o", tiny_run / "lat")
    assert lat["ks"] == [64, 4096, 49152] and lat["rounding"]["fastest"] >= 4000
    assert (tiny_run / "lat" / "latency.png").is_file()
    run = ok_json("optimize", "--counts", tiny_run / "counts.safetensors", "--config", cfg, *tok,
                  "--solver", "exact", "--latency", tiny_run / "lat" / "latency.json",
                  "--no-plots", "-o", tiny_run / "run")
    assert run["inputs"]["latency"] == str(tiny_run / "lat" / "latency.json")
    cal = ok_json("calibrate", tiny_run / "draft", "--target", tiny_run / "target",
                  "--per-category", 1, "--max-new-tokens", 6, "-o", tiny_run / "cal.json")
    assert len(cal["alphas"]) == 2 and cal["t_verify_seconds"] > 0
    sp = ok_json("optimize", "--counts", tiny_run / "counts.safetensors", "--config", cfg, *tok,
                 "--objective", "speedup", "--calibration", tiny_run / "cal.json",
                 "--latency", tiny_run / "lat" / "latency.json", "-o", tiny_run / "sp")
    assert 1 <= sp["k"] <= 49152 and sp["objective"] == "speedup"
    assert sp["predicted_tokens_per_s"] >= sp["predicted_full_vocab_tokens_per_s"]
    assert (tiny_run / "sp" / "vocab_mapping.pt").is_file()
    assert json.loads((tiny_run / "sp" / "summary.json").read_text())["k"] == sp["k"]
    fail("optimize", "--counts", tiny_run / "counts.safetensors", "--config", cfg, *tok,
         "--objective", "speedup", "--latency", tiny_run / "lat" / "latency.json",
         "-o", tiny_run / "x", words=("--calibration",))
    fail("optimize", "--counts", tiny_run / "counts.safetensors", "--config", cfg, *tok,
         "--latency", tiny_run / "cal.json", "-o", tiny_run / "x", words=("latency.json",))
