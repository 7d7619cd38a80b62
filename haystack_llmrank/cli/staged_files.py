"""Output files written whole or not at all."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_SPECIAL = {
    stat.S_IFIFO: "a pipe or FIFO",
    stat.S_IFCHR: "a character device, such as a terminal or /dev/null",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def check_output(path: Path, *, new_folders: bool = False) -> None:
    """Raise ``OSError`` unless :func:`staged_outputs` can write ``path``.

    ``path`` must be a regular file or nothing, and the folder that its symlinks lead to (where
    the staged file goes) must exist and be writable; with ``new_folders`` that folder may be
    missing, for the caller to make, where the nearest existing one above it is writable. A
    special file (a FIFO, ``/dev/stdout`` on a pipe or terminal, ``/dev/null``) is refused,
    as the rename would replace it with a regular file. Makes no folder.
    """
    try:
        mode: int | None = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None
    if mode is not None and stat.S_ISDIR(mode):
        raise IsADirectoryError(f"cannot write {path}: it is a folder")
    if mode is not None and not stat.S_ISREG(mode):
        kind = _SPECIAL.get(stat.S_IFMT(mode), "a special file")
        raise OSError(
            f"cannot write {path}: it is {kind}, not a regular file (outputs are written to a "
            "temporary file that then replaces the path, whole); give a file path"
        )
    folder = path.resolve().parent
    if new_folders:
        folder = next(f for f in (folder, *folder.parents) if f.exists())
    if not folder.exists():
        raise FileNotFoundError(f"cannot write {path}: folder {folder} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"cannot write {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {path}: folder {folder} is not writable")
    if mode is not None and not os.access(path, os.W_OK):
        raise PermissionError(f"cannot write {path}: it is read-only")


@contextmanager
def staged_outputs(*paths: Path) -> Iterator[list[Path]]:
    """Temporary files beside ``paths`` (beside the files their symlinks lead to) to write;
    once all are written each replaces its path, and on a failure all are removed, so no path
    is left half-written. :func:`check_output` checks a path beforehand."""
    targets = [path.resolve() for path in paths]
    staging = [path.with_name(f".{path.name}.{os.getpid()}.partial") for path in targets]
    try:
        yield staging
        for temporary, target in zip(staging, targets, strict=True):
            temporary.replace(target)
    finally:
        for temporary in staging:
            temporary.unlink(missing_ok=True)
