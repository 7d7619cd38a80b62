"""What a requested CUDA device that cannot be used does: raise, or warn and use the CPU.

Both backends follow the same policy, so a run never moves to the CPU silently.
"""

from __future__ import annotations

import logging
from typing import Literal

logger = logging.getLogger(__name__)

OnMissingGpu = Literal["raise", "warn"]
ON_MISSING_GPU: tuple[OnMissingGpu, ...] = ("raise", "warn")


def check_on_missing_gpu(value: str) -> OnMissingGpu:
    """``value`` as a policy; anything but ``"raise"`` or ``"warn"`` raises ``ValueError``."""
    if value not in ON_MISSING_GPU:
        raise ValueError(f"on_missing_gpu must be one of {ON_MISSING_GPU}, got {value!r}")
    return value


def fall_back_to_cpu(message: str, on_missing_gpu: OnMissingGpu, hint: str) -> None:
    """Apply the policy to a CUDA device that cannot be used.

    ``"raise"`` raises ``RuntimeError`` with ``message`` and ``hint``; ``"warn"`` logs a
    warning that the CPU is used instead, and returns.
    """
    if on_missing_gpu == "raise":
        raise RuntimeError(f"{message}; {hint}, or use device='cpu'")
    logger.warning("%s; running on the CPU instead (%s)", message, hint)
