"""The tokenizer files under ``tests/data`` that unit tests use are the embedded GGUF's."""

from __future__ import annotations

from typing import Any

import pytest

from haystack_llmrank.labels import ALPHABETIC_LABELS, resolve_label_ids
from haystack_llmrank.models import embedded_base, load_tokenizer
from haystack_llmrank.prompt import PromptBuilder

pytestmark = pytest.mark.integration


def test_fixture_tokenizer_is_the_embedded_one(smollm2_tokenizer: Any) -> None:
    embedded = load_tokenizer(embedded_base())
    assert len(smollm2_tokenizer) == len(embedded)
    assert smollm2_tokenizer.special_tokens_map == embedded.special_tokens_map
    assert smollm2_tokenizer.pad_token_id == embedded.pad_token_id
    labels = resolve_label_ids(embedded, ALPHABETIC_LABELS)
    assert resolve_label_ids(smollm2_tokenizer, ALPHABETIC_LABELS) == labels
    passages = ["Fleas live for months.", "Café au lait \u2013 ünïcode, 42 [B] > [A]."]
    prompts = [
        PromptBuilder(tokenizer, max_prompt_tokens=4096).build("flea life cycle", passages)
        for tokenizer in (smollm2_tokenizer, embedded)
    ]
    assert prompts[0].token_ids == prompts[1].token_ids
