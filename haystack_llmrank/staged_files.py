"""Outputs written whole or not at all: single files, and the files of one folder."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".llmrank-staging-"
"""The start of the name of the private folder :func:`staged_folder` makes inside its folder,
which goes on with the writing process's id, ``-`` and a random part."""
_STAGING_PID = re.compile(re.escape(STAGING_PREFIX) + r"(\d+)-")

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
    _check_writable(path.resolve().parent, str(path), new_folders=new_folders)
    if mode is not None and not os.access(path, os.W_OK):
        raise PermissionError(f"cannot write {path}: it is read-only")


def check_output_folder(folder: Path) -> None:
    """Raise ``OSError`` unless :func:`staged_folder` can write into ``folder``: a writable
    folder, or none where the nearest existing folder above it is writable. Makes no folder."""
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"cannot write into {folder}: it is not a folder")
    _check_writable(folder.resolve(), f"into {folder}", new_folders=True)


def _check_writable(folder: Path, written: str, *, new_folders: bool) -> None:
    """Raise ``OSError`` unless ``folder`` (with ``new_folders``, the nearest existing folder
    at or above it) is a writable folder; ``written`` says what could not be written."""
    if new_folders:
        folder = next(f for f in (folder, *folder.parents) if f.exists())
    if not folder.exists():
        raise FileNotFoundError(f"cannot write {written}: folder {folder} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"cannot write {written}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {written}: folder {folder} is not writable")


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


@contextmanager
def staged_folder(folder: Path, *, replaces: Collection[str], last: str) -> Iterator[Path]:
    """An empty private folder inside ``folder`` to write files into, which then replace the
    entries named in ``replaces``, whole or not at all.

    ``folder`` (with any missing folder above it) is made first; once it exists it is never
    renamed or removed. When the block ends, the entries named in ``replaces`` are moved out
    of ``folder`` (``last`` first) and the written files moved in (``last`` last), so that
    ``folder`` lacks ``last`` until it holds every new file; then the replaced entries are
    deleted. Nothing else in ``folder`` is touched: a written file whose name is taken by an
    entry not in ``replaces`` fails the swap. If the block or a move fails, the moves made are
    undone, and the private folder and the folders made for it are removed.
    :func:`check_output_folder` checks ``folder`` beforehand.
    """
    missing = [f for f in (folder, *folder.parents) if not f.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(dir=folder, prefix=f"{STAGING_PREFIX}{os.getpid()}-"))
    swapped = False
    try:
        written = root / "new"
        written.mkdir()
        yield written
        _swap(folder, written, root / "old", replaces, last)
        swapped = True
    finally:
        old = root / "old"
        stranded = sorted(p.name for p in old.iterdir()) if old.is_dir() and not swapped else []
        if stranded:  # a failed undo: keep what it could not put back
            logger.error("could not put %s back into %s: they are in %s", stranded, folder, old)
        else:
            shutil.rmtree(root, ignore_errors=True)
        if not swapped:
            for made in missing:  # the deepest first
                with contextlib.suppress(OSError):
                    made.rmdir()


def _swap(folder: Path, new: Path, old: Path, replaces: Collection[str], last: str) -> None:
    """Move ``replaces`` from ``folder`` into ``old``, then ``new``'s files into ``folder``
    (``last`` out first, in last); on a failure, move back what was moved."""
    old.mkdir()
    incoming = sorted((p.name for p in new.iterdir()), key=lambda name: (name == last, name))
    outgoing = sorted(
        (name for name in replaces if os.path.lexists(folder / name)),
        key=lambda name: (name != last, name),
    )
    taken = [name for name in incoming if os.path.lexists(folder / name) and name not in replaces]
    if taken:
        raise FileExistsError(f"{folder} now holds {taken}, which were not to be replaced")
    moves = [(folder / name, old / name) for name in outgoing]
    moves += [(new / name, folder / name) for name in incoming]
    done: list[tuple[Path, Path]] = []
    try:
        for source, target in moves:
            source.replace(target)
            done.append((source, target))
    except BaseException:
        for source, target in reversed(done):
            target.replace(source)
        raise


def clear_stale_staging(folder: Path) -> list[Path]:
    """Remove the private folders that :func:`staged_folder` left in ``folder`` for processes
    that no longer run (ended by SIGKILL, say); return those of processes still running."""
    running = []
    for path in sorted(folder.glob(f"{STAGING_PREFIX}*")):
        match = _STAGING_PID.match(path.name)
        if match is None or not path.is_dir():
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and _runs(pid):
            running.append(path)
            continue
        logger.warning("removing %s, left by process %d, which no longer runs", path, pid)
        shutil.rmtree(path, ignore_errors=True)
    return running


def _runs(pid: int) -> bool:
    """Whether a process ``pid`` exists (outside POSIX: always assumed, to remove nothing)."""
    if os.name != "posix":
        return True  # os.kill(pid, 0) would send CTRL_C_EVENT on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True
