"""Device names, in the one grammar both backends take: ``cpu``, ``cuda``, ``cuda:N``, ``mps``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DeviceType = Literal["cpu", "cuda", "mps"]
BACKEND_DEVICES: dict[str, tuple[DeviceType, ...]] = {
    "torch": ("cpu", "cuda", "mps"),
    "onnx": ("cpu", "cuda"),
}
"""The device types each backend runs on."""


@dataclass(frozen=True)
class Device:
    """A device's type, and its index where one was given."""

    type: DeviceType
    index: int | None = None

    @property
    def name(self) -> str:
        """``cpu``, ``mps``, ``cuda`` or ``cuda:N``: a CPU or MPS index (0) is dropped."""
        return f"cuda:{self.index}" if self.type == "cuda" and self.index is not None else self.type


def parse_device(device: str, backend: str) -> Device:
    """``device`` as a :class:`Device` that ``backend`` runs on (:data:`BACKEND_DEVICES`).

    The grammar is ``TYPE`` or ``TYPE:N``, in any case, spaces around it ignored; N is
    any index for ``cuda`` and 0 for ``cpu`` and ``mps``, which have one device (a
    ``torch.device`` is read by its name). Anything else raises ``ValueError``, naming
    ``device`` and what the backend takes.
    """
    types = BACKEND_DEVICES[backend]
    kind, colon, index = str(device).strip().lower().partition(":")
    numbered = index.isascii() and index.isdigit()
    if kind in types and (not colon or (numbered and (kind == "cuda" or int(index) == 0))):
        return Device(kind, int(index) if colon else None)
    kinds = ", ".join(types[:-1]) + f" or {types[-1]}"
    raise ValueError(
        f"unknown device {device!r}: the {backend} backend runs on {kinds} only (cuda:N "
        "names a CUDA device by index; in any case)"
    )
