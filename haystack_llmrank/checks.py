"""Checks of option values that the engine and its adapters share."""

from __future__ import annotations

import numbers


def check_positive(name: str, value: object, *, optional: bool = True) -> int | None:
    """``value`` as an ``int`` (numpy integers too), or ``ValueError`` unless it is a
    positive integer, or ``None`` where ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        allowed = "a positive integer or None" if optional else "a positive integer"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return int(value)
