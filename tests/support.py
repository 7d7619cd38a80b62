"""Helpers shared by test modules: the project root and tiny random Llama models.

A module of its own (not ``conftest``), so that test files can import it whichever
``conftest`` pytest loaded last.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SMOLLM2_TOKENIZER_DIR = Path(__file__).parent / "data" / "smollm2-tokenizer"
"""The SmolLM2-135M-Instruct tokenizer files, so that unit tests need no GGUF."""


def make_tiny_llama(vocab_size: int, *, seed: int = 0, layers: int = 2) -> Any:
    """A small random Llama with the given vocabulary, in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        pad_token_id=2,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # Random init gives near-equal logits; widen them so orderings are decisive.
    with torch.no_grad():
        model.lm_head.weight.mul_(50)
    return model.eval()


def import_example(name: str) -> Any:
    """The module ``examples/<name>.py``, imported by name."""
    import importlib
    import sys

    sys.path.insert(0, str(PROJECT_ROOT / "examples"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(PROJECT_ROOT / "examples"))
