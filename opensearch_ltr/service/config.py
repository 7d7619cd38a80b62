"""Limits and settings of the rerank service."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ServiceConfig:
    """What the rerank service accepts and how it batches.

    ``api_keys`` empty turns authentication off. Size limits answer 413, but for
    ``max_document_chars``: a longer document is read to that many characters (no prompt
    reads further: passages keep their first words). A request that is
    not answered within ``timeout_s`` (queueing included) answers 504, and its work is
    dropped; a worker that finishes no window for ``timeout_s`` counts as stalled (``/ready``
    503, new requests 503). A connection must send a complete request head within
    ``header_timeout_s`` of opening or of the first byte of a later request; beyond
    ``max_connections`` open connections, new ones are answered 503 and closed. On shutdown,
    in-flight requests may run for ``shutdown_grace_s`` (0: they are cancelled at once).
    Durations must be finite; ``api_keys`` is a sequence of strings, never one string.
    """

    api_keys: tuple[str, ...] = ()
    max_body_bytes: int = 4 * 1024 * 1024
    max_documents: int = 1000
    max_document_chars: int = 20_000
    max_query_chars: int = 4_000
    timeout_s: float = 30.0
    max_batch_requests: int = 16
    max_pending_requests: int = 256
    shutdown_grace_s: float = 30.0
    header_timeout_s: float = 10.0
    max_connections: int = 512

    def __post_init__(self) -> None:
        for name in (
            "max_body_bytes",
            "max_documents",
            "max_document_chars",
            "max_query_chars",
            "max_batch_requests",
            "max_pending_requests",
            "max_connections",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("timeout_s", "header_timeout_s", "shutdown_grace_s"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        for name in ("timeout_s", "header_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.shutdown_grace_s >= 0:
            raise ValueError(f"shutdown_grace_s must not be negative, got {self.shutdown_grace_s}")
        if isinstance(self.api_keys, str | bytes):  # its characters would each be a key
            raise TypeError("api_keys must be a sequence of keys, not one string")
        object.__setattr__(self, "api_keys", tuple(self.api_keys))
        for key in self.api_keys:
            if not isinstance(key, str):
                raise TypeError(f"API keys must be strings, got {type(key).__name__}")
            if not key or key != key.strip() or not key.isprintable():
                raise ValueError(
                    "API keys must be non-empty printable strings without surrounding spaces"
                )
