"""Output files written whole or not at all."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_outputs(*paths: Path) -> Iterator[list[Path]]:
    """Temporary files beside ``paths`` to write; once all are written each replaces its
    path, and on a failure all are removed, so no path is left half-written."""
    targets = [path.resolve() for path in paths]
    staging = [path.with_name(f".{path.name}.{os.getpid()}.partial") for path in targets]
    try:
        yield staging
        for temporary, target in zip(staging, targets, strict=True):
            temporary.replace(target)
    finally:
        for temporary in staging:
            temporary.unlink(missing_ok=True)
