import json

import numpy as np
import pytest
import safetensors.torch
import torch

from draftvocab.core.errors import DraftVocabError
from draftvocab.vocab.mapping import (
    VocabMapping,
    build_mapping,
    load_mapping,
    mapping_from_ids,
    validate_mapping,
    write_mapping_files,
)


class Foreign:
    """Not a tensor: a weights-only loader must refuse to rebuild it."""


def _good():
    # ids 2, 5, 7 of V = 10
    return np.array([2, 4, 5], dtype=np.int64), np.isin(np.arange(10), [2, 5, 7])


def test_mapping_from_ids_any_order():
    m = mapping_from_ids([7, 2, 5], vocab_size=10)
    np.testing.assert_array_equal(m.d2t, [2, 4, 5])
    np.testing.assert_array_equal(m.draft_ids, [2, 5, 7])
    np.testing.assert_array_equal(np.flatnonzero(m.t2d), [2, 5, 7])
    assert (m.k, m.vocab_size) == (3, 10)
    assert m.d2t.dtype == np.int64 and m.t2d.dtype == np.bool_


def test_mapping_is_read_only():
    m = mapping_from_ids([1, 3], vocab_size=4)
    with pytest.raises(ValueError, match="read-only"):
        m.d2t[0] = 0


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ([1, 4], r"draft id 4 is outside \[0, 4\)"),
        ([-1, 2], r"draft id -1 is outside \[0, 4\)"),
        ([2, 1, 2], "draft id 2 appears more than once"),
        ([], "non-empty"),
        ([0.5], "must be integers"),
    ],
)
def test_mapping_from_ids_rejects(ids, message):
    with pytest.raises(DraftVocabError, match=message):
        mapping_from_ids(ids, vocab_size=4)


def test_build_mapping_top_k_ties_to_lower_id():
    counts = np.array([5, 0, 5, 1, 9])
    np.testing.assert_array_equal(build_mapping(counts, 2).draft_ids, [0, 4])
    np.testing.assert_array_equal(build_mapping(counts, 3).draft_ids, [0, 2, 4])
    np.testing.assert_array_equal(build_mapping(counts, 4).d2t, [0, 1, 1, 1])
    assert build_mapping(counts, 5).t2d.all()


@pytest.mark.parametrize("k", [0, 6, -1])
def test_build_mapping_k_range(k):
    with pytest.raises(DraftVocabError, match=rf"k must be in \[1, V=5\], got {k}"):
        build_mapping(np.ones(5, dtype=np.int64), k)


def test_validate_accepts_good_and_torch():
    d2t, t2d = _good()
    validate_mapping(d2t, t2d, vocab_size=10)
    validate_mapping(torch.from_numpy(d2t), torch.from_numpy(t2d))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d, t: (d.astype(np.int32), t), "d2t must be a 1-D int64 array, got int32"),
        (lambda d, t: (d.reshape(1, 3), t), r"d2t must be a 1-D int64 array, got int64 with shape"),
        (lambda d, t: (d, t.astype(np.uint8)), "t2d must be a 1-D bool array, got uint8"),
        (lambda d, t: (d[:0], t), r"d2t has 0 entries; the draft vocab size must be in \[1, 10\]"),
        (
            lambda d, t: (np.array([2, 4, 8]), t),
            r"draft ids out of range: draft index 2 maps to target id 10, outside \[0, 10\)",
        ),
        (lambda d, t: (np.array([-3, 4, 5]), t), "draft index 0 maps to target id -3"),
        (
            lambda d, t: (np.array([5, 1, 5]), t),
            "draft ids are not strictly ascending: draft index 1 maps to 2 after 5",
        ),
        (
            lambda d, t: (np.array([2, 4, 3]), t),
            "not strictly ascending: draft index 2 maps to 5 after 5",
        ),
        (lambda d, t: (d, t | (np.arange(10) == 0)), "t2d marks 4 target ids but d2t has 3"),
        (
            lambda d, t: (np.array([2, 4, 6]), t),
            "t2d disagrees with d2t at draft index 2: d2t gives target id 8, t2d marks 7",
        ),
    ],
)
def test_validate_names_each_broken_invariant(mutate, message):
    d2t, t2d = mutate(*_good())
    with pytest.raises(DraftVocabError, match=message):
        validate_mapping(d2t, t2d)
    with pytest.raises(DraftVocabError, match=message):
        VocabMapping(d2t=d2t, t2d=t2d)


def test_validate_vocab_size():
    with pytest.raises(DraftVocabError, match="t2d has length 10 but the target vocab_size is 12"):
        validate_mapping(*_good(), vocab_size=12)


def test_write_and_load_round_trip(tmp_path):
    counts = np.array([0, 3, 9, 0, 1, 7])
    m = build_mapping(counts, 3)  # ids 1, 2, 5
    paths = write_mapping_files(
        tmp_path / "out", m, counts=counts, decode=lambda ids: [f"<{i}>" for i in ids]
    )
    assert [p.name for p in paths] == [
        "vocab_mapping.pt",
        "vocab_mapping.safetensors",
        "draft_vocab.json",
    ]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths)
    for p in paths[:2]:
        loaded = load_mapping(p, vocab_size=6)
        np.testing.assert_array_equal(loaded.d2t, m.d2t)
        np.testing.assert_array_equal(loaded.t2d, m.t2d)
    np.testing.assert_array_equal(load_mapping(tmp_path / "out").draft_ids, [1, 2, 5])
    vocab = json.loads(paths[2].read_text())
    assert vocab == {
        "vocab_size": 6,
        "draft_vocab_size": 3,
        "tokens": [
            {"id": 1, "text": "<1>", "count": 3},
            {"id": 2, "text": "<2>", "count": 9},
            {"id": 5, "text": "<5>", "count": 7},
        ],
    }


def test_pt_is_specforge_format(tmp_path):
    m = mapping_from_ids([0, 3, 4], vocab_size=6)
    pt, st, _ = write_mapping_files(tmp_path, m)
    data = torch.load(pt, weights_only=True)
    assert set(data) == {"d2t", "t2d"}
    assert data["d2t"].dtype == torch.int64 and data["t2d"].dtype == torch.bool
    assert data["d2t"].tolist() == [0, 2, 2]
    assert data["t2d"].tolist() == [True, False, False, True, True, False]
    # EAGLE-3 draft index → target id, the way SGLang applies it.
    assert (torch.arange(3) + data["d2t"]).tolist() == [0, 3, 4]
    st_data = safetensors.torch.load_file(st)
    assert st_data["d2t"].dtype == torch.int64 and st_data["t2d"].dtype == torch.bool
    assert json.loads((tmp_path / "draft_vocab.json").read_text())["tokens"][0] == {
        "id": 0,
        "text": None,
        "count": None,
    }


def test_write_validates_extras(tmp_path):
    m = mapping_from_ids([1], vocab_size=3)
    with pytest.raises(DraftVocabError, match=r"counts has shape \(2,\), expected \(3,\)"):
        write_mapping_files(tmp_path, m, counts=np.ones(2))
    with pytest.raises(DraftVocabError, match="decode returned 2 strings for 1 token ids"):
        write_mapping_files(tmp_path, m, decode=lambda ids: ["a", "b"])
    assert list(tmp_path.iterdir()) == []


def test_load_refuses_foreign_pickle(tmp_path):
    d2t, t2d = _good()
    path = tmp_path / "evil.pt"
    torch.save({"d2t": torch.from_numpy(d2t), "t2d": torch.from_numpy(t2d), "x": Foreign()}, path)
    with pytest.raises(DraftVocabError, match="refusing to load .*not a weights-only file"):
        load_mapping(path)


def test_load_rejects_bad_files(tmp_path):
    d2t, t2d = _good()
    bad = tmp_path / "bad.pt"
    torch.save({"d2t": torch.from_numpy(d2t + 1), "t2d": torch.from_numpy(t2d)}, bad)
    with pytest.raises(DraftVocabError, match=r"bad\.pt: t2d disagrees with d2t"):
        load_mapping(bad)
    nokey = tmp_path / "nokey.safetensors"
    safetensors.torch.save_file({"d2t": torch.from_numpy(d2t)}, nokey)
    with pytest.raises(DraftVocabError, match="has no 't2d' key"):
        load_mapping(nokey)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(DraftVocabError, match="cannot read .* as safetensors"):
        load_mapping(junk)
    lst = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], lst)
    with pytest.raises(DraftVocabError, match="holds a list, expected a dict"):
        load_mapping(lst)
    good = tmp_path / "good.pt"
    torch.save({"d2t": torch.from_numpy(d2t), "t2d": torch.from_numpy(t2d)}, good)
    with pytest.raises(DraftVocabError, match="target vocab_size is 11"):
        load_mapping(good, vocab_size=11)
    with pytest.raises(DraftVocabError, match="mapping file not found"):
        load_mapping(tmp_path / "missing.pt")
    other = tmp_path / "mapping.npz"
    other.write_bytes(b"x")
    with pytest.raises(DraftVocabError, match="expected .pt or .safetensors"):
        load_mapping(other)
