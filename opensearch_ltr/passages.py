"""The passage the engine reads for a hit, taken from its ``_source``.

A passage is the title (if ``title_field`` is set and present) followed by every present text
field, in ``text_fields`` order, joined by ``separator``. Fields are ``_source`` paths,
resolved as OpenSearch resolves them: ``"a.b.c"`` reads ``{"a": {"b": {"c": ...}}}``, a
dotted key such as ``{"a.b": {"c": ...}}`` (at each object the shortest run of names that
is one of its keys is taken), and every ``c`` of a list of objects (a ``nested`` or
object-array field), in order. A field is present when it holds a non-blank
string or a list with non-blank strings (joined by ``separator``); other values count as
absent. The engine collapses whitespace, so the
separator only matters as a word boundary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from haystack_llmrank.blank_passages import is_blank

DEFAULT_SEPARATOR = "\n"


def _lookup(source: Any, path: str) -> list[Any]:
    """The values at ``path`` in ``source``, lists flattened, in document order."""
    return _walk(source, [part for part in path.split(".") if part])


def _walk(source: Any, parts: list[str]) -> list[Any]:
    """The values at the path ``parts`` in ``source``: at each object, the shortest run of
    parts that names one of its keys with a value is taken, as OpenSearch reads a path."""
    if isinstance(source, list):
        return [value for item in source for value in _walk(item, parts)]
    if not parts:
        return [source]
    if not isinstance(source, Mapping):
        return []
    for end in range(1, len(parts) + 1):
        value = source.get(".".join(parts[:end]))
        if value is not None:
            return _walk(value, parts[end:])
    return []


def _strings(values: list[Any]) -> list[str]:
    return [item for item in values if isinstance(item, str) and not is_blank(item)]


@dataclass(frozen=True)
class PassageFields:
    """Which ``_source`` fields make a hit's passage, and how they are joined."""

    text_fields: tuple[str, ...] = ("text",)
    title_field: str | None = None
    separator: str = DEFAULT_SEPARATOR

    def __post_init__(self) -> None:
        if isinstance(self.text_fields, str) or not self.text_fields:
            raise ValueError("text_fields must be a non-empty sequence of field names")
        if not all(isinstance(f, str) and f for f in self.text_fields):
            raise ValueError(f"text_fields must be non-empty strings, got {self.text_fields!r}")

    @classmethod
    def of(
        cls, text_fields: Sequence[str], title_field: str | None, separator: str
    ) -> PassageFields:
        """Build from user arguments (``text_fields`` may be any sequence of names)."""
        if isinstance(text_fields, str):
            raise ValueError("text_fields must be a list of field names, not one string")
        return cls(tuple(text_fields), title_field, separator)

    def texts(self, hit: Mapping[str, Any]) -> list[str]:
        """The present text fields of ``hit``, each joined (the title not included)."""
        source = hit.get("_source")
        values = (_strings(_lookup(source, field)) for field in self.text_fields)
        return [self.separator.join(strings) for strings in values if strings]

    def passage(self, hit: Mapping[str, Any]) -> str:
        """The passage of ``hit``: its title and present text fields (empty when none)."""
        parts = _strings(_lookup(hit.get("_source"), self.title_field)) if self.title_field else []
        return self.separator.join([*parts, *self.texts(hit)])
