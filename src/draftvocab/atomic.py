"""Atomic artefact writes: a reader sees the old file/directory or the new one, never a mix.

Files are written to a temporary sibling and `os.replace`d. Directories are built in a
temporary sibling and swapped in with two renames, so an interrupted run leaves the previous
output untouched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from draftvocab.errors import DraftVocabError


def _check_parent_writable(path: Path) -> None:
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DraftVocabError(f"cannot create output directory {parent}: {exc.strerror}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DraftVocabError(f"output directory {parent} is not writable")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` to `path` via a temp file + rename."""
    path = Path(path)
    _check_parent_writable(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; artefacts are shared files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temp directory; on success it replaces `path` whole.

    On an exception the temp directory is removed and `path` is left as it was.
    """
    path = Path(path)
    _check_parent_writable(path)
    if path.exists() and not path.is_dir():
        raise DraftVocabError(f"output path {path} exists and is not a directory")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        mode = 0o666 & ~_umask()
        for f in tmp.rglob("*"):  # writers such as safetensors create 0600 files
            if f.is_file() and not f.is_symlink():
                os.chmod(f, mode)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old.{os.getpid()}"
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
