"""Atomic artefact writes: a reader sees the old output or the new one, never a mix, and a
failed, interrupted or killed run leaves the previous output as it was.

Outputs are built in temporary siblings named `.NAME.draftvocab-HOST-PID-RANDOM.tmp` and put in
place as the last step: with SIGINT and SIGTERM blocked, and refused if an interrupt came before
(even one a library swallowed; see `interrupts`). A directory is exchanged with its
predecessor in one step where Linux allows (`renameat2(RENAME_EXCHANGE)`), else by two renames
that no signal can split. Siblings a killed run of this host left behind are removed by the
next run on the same path — only ours (the exact naming pattern, a dead PID) — and a
predecessor that a kill stranded between the two renames is put back first. Commands check
their output paths (`check_output_file`, `check_output_dir`) before any work.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

from draftvocab.core import interrupts
from draftvocab.core.errors import DraftVocabError

_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"
_OURS = re.compile(r"^\.(?P<name>.+)\.draftvocab-(?P<host>[A-Za-z0-9_.]+)-(?P<pid>\d+)-"
                   r"(?P<rand>[0-9a-f]{8})\.(?P<kind>tmp|old)$")
committed: list[Path] = []  # outputs put in place by this process, for the interrupt message


def _record(path: Path) -> None:
    """Remember an output the user will see (not a file inside one of our staging dirs)."""
    if not any(_OURS.match(p.name) for p in path.parents):
        committed.append(path)


def _sibling(path: Path, kind: str) -> Path:
    return path.parent / f".{path.name}.draftvocab-{_HOST}-{os.getpid()}-" \
                         f"{secrets.token_hex(4)}.{kind}"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def clean_stale(path: str | os.PathLike) -> None:
    """Remove temporary siblings of `path` that dead runs of this host left behind; first put
    back a predecessor that was moved aside and never replaced."""
    path = Path(path)
    try:
        entries = list(path.parent.iterdir()) if path.parent.is_dir() else []
    except OSError:
        return
    stale = []
    for entry in entries:
        m = _OURS.match(entry.name)
        if m and m["name"] == path.name and m["host"] == _HOST and not _alive(int(m["pid"])):
            stale.append((m["kind"], entry))
    for kind, entry in sorted(stale):  # "old" first: restore before anything is removed
        if kind == "old" and not path.exists():
            with contextlib.suppress(OSError):  # if it cannot go back, it stays: never lost
                os.replace(entry, path)
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()


def _check_parent_writable(path: Path) -> None:
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise DraftVocabError(f"cannot create output directory {parent}: a file of that name "
                              "exists")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DraftVocabError(f"cannot create output directory {parent}: "
                              f"{exc.strerror or exc}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DraftVocabError(f"output directory {parent} is not writable")


def check_output_file(path: str | os.PathLike) -> Path:
    """Fail now, with one line, if `path` cannot become an output file; clear stale temps."""
    path = Path(path)
    if path.is_dir():
        raise DraftVocabError(f"output path {path} is a directory; give a file name")
    _check_parent_writable(path)
    clean_stale(path)
    return path


def check_output_dir(path: str | os.PathLike) -> Path:
    """Fail now, with one line, if `path` cannot become an output directory; clear stale
    temps (restoring a predecessor a killed run left aside)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DraftVocabError(f"output path {path} exists and is not a directory")
    _check_parent_writable(path)
    clean_stale(path)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` to `path` via a temporary sibling + rename."""
    path = check_output_file(path)
    payload = data.encode() if isinstance(data, str) else data
    tmp = _sibling(path, "tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        with interrupts.deferred():
            interrupts.check()
            os.replace(tmp, path)
            _record(path)
    except OSError as exc:
        raise DraftVocabError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return path


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _fix_modes(root: Path) -> None:
    mode = 0o666 & ~_umask()
    for f in root.rglob("*"):  # writers such as safetensors create 0600 files
        if f.is_file() and not f.is_symlink():
            os.chmod(f, mode)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temp directory; on success it replaces `path` whole.

    On an exception or an interrupt the temp directory is removed and `path` is left as it was.
    """
    path = check_output_dir(path)
    tmp = _sibling(path, "tmp")
    tmp.mkdir(mode=0o777 & ~_umask())
    old = swapped = None
    try:
        yield tmp
        _fix_modes(tmp)
        with interrupts.deferred():
            interrupts.check()
            if not path.exists():
                os.replace(tmp, path)
            elif _exchange(tmp, path):
                old = tmp  # the predecessor, now at the temp name
            else:
                old = _sibling(path, "old")
                os.replace(path, old)
                try:
                    os.replace(tmp, path)
                except BaseException:
                    os.replace(old, path)
                    raise
            swapped = old
            _record(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:  # also when a signal held back during the swap lands right after it
        if swapped is not None:
            shutil.rmtree(swapped, ignore_errors=True)


@contextlib.contextmanager
def atomic_files(directory: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging directory; on success every file written there is renamed into
    `directory` (which other runs share, so it is not replaced whole), all in one
    signal-free step. On an exception or an interrupt nothing in `directory` changes."""
    directory = check_output_dir(directory)
    directory.mkdir(parents=True, exist_ok=True)
    clean_stale(directory / "staged")
    stage = _sibling(directory / "staged", "tmp")
    stage.mkdir()
    try:
        yield stage
        _fix_modes(stage)
        names = sorted(p.name for p in stage.iterdir())
        for name in names:
            target = directory / name
            if target.is_dir():
                raise DraftVocabError(f"cannot write {target}: it is a directory")
        with interrupts.deferred():
            interrupts.check()
            for name in names:
                os.replace(stage / name, directory / name)
                _record(directory / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
