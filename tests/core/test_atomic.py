"""atomic_directory: the old output or the new one, whole, and no temporary left behind —
also when an interrupt held back during the swap lands the moment the swap is done."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from draftvocab.core import atomic, interrupts


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text("old")
    (run / "only_in_old.txt").write_text("old")
    return run


@pytest.fixture(params=["exchange", "two-renames"])
def swap(request, monkeypatch):
    if request.param == "two-renames":  # a filesystem without renameat2(RENAME_EXCHANGE)
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    return request.param


def _signal_after_swap(monkeypatch) -> None:
    """Make `deferred` raise on leaving, as a signal held back during the swap does."""
    @contextlib.contextmanager
    def deferred():
        yield
        raise KeyboardInterrupt

    monkeypatch.setattr(interrupts, "deferred", deferred)


def test_success_replaces_the_directory_whole(old_run, swap):
    with atomic.atomic_directory(old_run) as tmp:
        (tmp / "summary.json").write_text("new")
    assert _tree(old_run) == {"summary.json": "new"}
    assert sorted(p.name for p in old_run.parent.iterdir()) == ["run"]


def test_failure_before_the_swap_leaves_the_old_one(old_run, swap):
    with pytest.raises(RuntimeError), atomic.atomic_directory(old_run) as tmp:
        (tmp / "summary.json").write_text("half")
        raise RuntimeError("boom")
    assert _tree(old_run) == {"summary.json": "old", "only_in_old.txt": "old"}
    assert sorted(p.name for p in old_run.parent.iterdir()) == ["run"]


def test_an_interrupt_landing_right_after_the_swap_leaves_the_new_one_and_no_sibling(
        old_run, swap, monkeypatch):
    _signal_after_swap(monkeypatch)
    monkeypatch.setattr(atomic, "committed", [])
    with pytest.raises(KeyboardInterrupt), atomic.atomic_directory(old_run) as tmp:
        (tmp / "summary.json").write_text("new")
    assert _tree(old_run) == {"summary.json": "new"}
    assert atomic.committed == [old_run]  # the one line names it as written
    assert sorted(p.name for p in old_run.parent.iterdir()) == ["run"]  # predecessor gone
