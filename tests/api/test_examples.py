"""The public API's docstring examples run as written (offline presets, real small target)."""

from __future__ import annotations

import doctest
import importlib

import pytest

API_MODULES = ["inputs", "vocab", "optimize", "training", "decoding", "measure"]


@pytest.mark.parametrize("name", API_MODULES)
def test_api_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples write their outputs to the working directory
    module = importlib.import_module(f"draftvocab.api.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, "a public API module without an example"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"
