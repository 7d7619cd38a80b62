"""Checks of option values that the engine and its adapters share."""

from __future__ import annotations

import numbers
from typing import TypeGuard


def is_whole(value: object, least: int | None = 1) -> TypeGuard[numbers.Integral]:
    """Whether ``value`` is an integer (numpy's too, not a bool) of at least ``least``
    (``None``: any integer)."""
    return (
        isinstance(value, numbers.Integral)
        and not isinstance(value, bool)
        and (least is None or int(value) >= least)
    )


def check_positive(name: str, value: object, *, optional: bool = True) -> int | None:
    """``value`` as an ``int`` (numpy integers too), or ``ValueError`` unless it is a
    positive integer, or ``None`` where ``optional``."""
    if value is None and optional:
        return None
    if not is_whole(value):
        allowed = "a positive integer or None" if optional else "a positive integer"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return int(value)
