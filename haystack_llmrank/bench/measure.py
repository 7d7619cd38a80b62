"""Clocks, peak memory and the dense matmul throughput of a device."""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def synchronize(device: str) -> None:
    """Wait for queued CUDA work, so that a clock reading covers it."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def clock(device: str) -> float:
    """``time.perf_counter()`` after the device has finished its queued work."""
    synchronize(device)
    return time.perf_counter()


def reset_peak_rss() -> bool:
    """Reset this process's peak resident set size (Linux); False where it cannot."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB, since its start or the last reset.

    Linux: ``VmHWM`` of ``/proc/self/status`` (``ru_maxrss`` would include the peak of the
    process that spawned this one). Elsewhere: ``ru_maxrss``.
    """
    try:
        status = _STATUS.read_text()
    except OSError:
        status = ""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**10
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def reset_peak_cuda(device: str) -> None:
    """Reset torch's peak CUDA allocation counter (no-op on CPU)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def peak_cuda_mb(device: str) -> float | None:
    """Peak CUDA memory allocated by torch since the last reset, in MiB; None on CPU."""
    if not device.startswith("cuda"):
        return None
    import torch

    return float(torch.cuda.max_memory_allocated(device)) / 2**20


def matmul_tflops(
    device: str,
    dtype: str,
    size: int,
    repeats: int,
    inner: int = 1,
    budget_seconds: float | None = None,
) -> float:
    """Dense ``size x size`` matmul TFLOP/s: best of ``repeats`` timings of ``inner`` products.

    With ``budget_seconds``, timings stop once that much time has passed since the first
    (warm-up) product, and a warm-up that alone takes that long is the one timing: a CPU that
    emulates ``dtype`` (bfloat16 without AVX512-BF16 or AMX, about 1 GFLOP/s) would otherwise
    take minutes.
    """
    import torch

    a = torch.randn(size, size, device=device, dtype=getattr(torch, dtype))
    b = torch.randn(size, size, device=device, dtype=getattr(torch, dtype))
    began = clock(device)
    torch.matmul(a, b)
    warm_up = clock(device) - began
    if budget_seconds is not None and warm_up >= budget_seconds:
        return 2 * size**3 / warm_up / 1e12
    best = float("inf")
    for _ in range(repeats):
        start = clock(device)
        for _ in range(inner):
            torch.matmul(a, b)
        best = min(best, (clock(device) - start) / inner)
        if budget_seconds is not None and clock(device) - began >= budget_seconds:
            break
    return 2 * size**3 / best / 1e12
