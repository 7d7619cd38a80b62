"""Make a causal LM trainable (LoRA through peft, or all weights) and save what was trained."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from haystack_llmrank.model_templates import write_template
from haystack_llmrank.models import EMBEDDED_BASE, peft_wrapping, text_config, umask_modes
from haystack_llmrank.prompt import PromptTemplate

LORA_TARGETS: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)
"""The linear layers LoRA adapts by default (the attention and MLP projections)."""


@dataclass(frozen=True)
class LoraSettings:
    """LoRA rank, scaling, dropout, the module names it adapts, and in how many layers.

    ``top_layers`` limits the adapters to the last N decoder layers (``None``: every layer).
    Backpropagation then stops at the lowest adapted layer, with or without gradient
    checkpointing, and the layers below keep no activations.
    ``init_from`` names a saved adapter folder of the same shape to start from instead of
    LoRA's initialisation (a fresh ``B = 0``).
    """

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = LORA_TARGETS
    top_layers: int | None = None
    init_from: str | None = None

    def __post_init__(self) -> None:
        if self.rank < 1 or self.alpha < 1:
            raise ValueError(f"LoRA rank and alpha must be positive, got {self.rank}, {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("LoRA needs at least one target module")
        if self.top_layers is not None and self.top_layers < 1:
            raise ValueError(f"LoRA top_layers must be at least 1, got {self.top_layers}")


def make_trainable(model: Any, lora: LoraSettings | None, *, gradient_checkpointing: bool) -> Any:
    """Wrap ``model`` with LoRA adapters (only they train), or unfreeze every weight."""
    model.config.use_cache = False
    if lora is None:
        narrow = sorted({str(p.dtype) for p in model.parameters() if p.dtype.itemsize < 4})
        if narrow:
            raise ValueError(
                f"full fine-tuning updates the weights in place, and these are "
                f"{', '.join(narrow)}: small updates would round away; load the model in "
                "float32 (--dtype float32), or train LoRA adapters, which stay float32"
            )
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        trained = model
    else:
        trained = _with_lora(model, lora)
    if gradient_checkpointing:
        _checkpoint_activations(model)
    return trained.train()


def _with_lora(model: Any, lora: LoraSettings) -> Any:
    """``model`` wrapped with fresh LoRA adapters, or those saved in ``lora.init_from``."""
    from peft import LoraConfig, get_peft_model

    names = [name for name, _ in model.named_modules()]
    unmatched = [
        target
        for target in lora.target_modules
        if not any(name == target or name.endswith(f".{target}") for name in names)
    ]
    if unmatched:
        raise ValueError(
            f"LoRA target modules that name no module of {type(model).__name__}: "
            f"{', '.join(unmatched)}; its linear layers are named e.g. "
            f"{', '.join(_linear_names(model)[:8])}"
        )
    config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        layers_to_transform=_top_layers(model, lora.top_layers),
        task_type="CAUSAL_LM",
    )
    with peft_wrapping():
        wrapped = get_peft_model(model, config)
    if lora.init_from is not None:
        _load_adapter_weights(wrapped, config, Path(lora.init_from))
    return wrapped


def _linear_names(model: Any) -> list[str]:
    """The distinct last name parts of ``model``'s linear layers, in model order."""
    import torch

    found = (
        n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
    )
    return list(dict.fromkeys(found))


def _checkpoint_activations(model: Any) -> None:
    """Recompute each decoder layer's activations in the backward pass instead of keeping
    them, with torch's non-reentrant checkpointing.

    transformers then makes the embeddings' output require gradients, which only reentrant
    checkpointing needs; that hook is removed, so backpropagation still stops at the lowest
    layer that trains instead of running through every layer below it.
    """
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.disable_input_require_grads()


_SHAPING_FIELDS = (
    "r",
    "lora_alpha",
    "use_rslora",
    "target_modules",
    "rank_pattern",
    "alpha_pattern",
)
"""The LoRA settings that shape or scale an adapter's output, so a saved one must share them."""


def _load_adapter_weights(model: Any, config: Any, folder: Path) -> None:
    """Set ``model``'s LoRA weights to those saved in ``folder``: the saved adapter's
    :data:`_SHAPING_FIELDS` must equal ``config``'s, and it must hold every weight."""
    from peft import LoraConfig
    from safetensors.torch import load_file

    from haystack_llmrank.models import load_adapter_weights

    file = folder / "adapter_model.safetensors"
    if not file.is_file():
        raise ValueError(f"{folder} holds no adapter_model.safetensors to start from")
    unfit = f"the adapter in {folder} does not fit these LoRA settings"
    saved = LoraConfig.from_pretrained(str(folder))
    differing = [
        f"{name} is {_shown(getattr(saved, name))} saved, {_shown(getattr(config, name))} given"
        for name in _SHAPING_FIELDS
        if getattr(saved, name) != getattr(config, name)
    ]
    if differing:
        raise ValueError(f"{unfit}: {'; '.join(differing)}")
    try:
        load_adapter_weights(model, load_file(str(file)))
    except ValueError as exc:
        raise ValueError(f"{unfit}: {exc}") from exc


def _shown(value: Any) -> Any:
    """``value`` as an error message shows it: a set sorted into a list."""
    return sorted(value) if isinstance(value, set | frozenset) else value


def _top_layers(model: Any, top: int | None) -> list[int] | None:
    """Indices of the last ``top`` decoder layers of ``model`` (``None``: all of them)."""
    if top is None:
        return None
    total = int(text_config(model.config).num_hidden_layers)
    if top > total:
        raise ValueError(f"LoRA top_layers is {top}, but the model has {total} layers")
    return list(range(total - top, total))


def causal_lm(model: Any) -> Any:
    """The transformers causal LM inside ``model`` (a peft wrapper's base, adapters injected)."""
    unwrap = getattr(model, "get_base_model", None)
    return unwrap() if callable(unwrap) else model


def plain_output_head(lm: Any) -> Any:
    """``lm``'s output projection, refusing models whose forward rescales the logits.

    Training applies the head to chosen hidden states itself, so a softcap or logit
    scale (:func:`~haystack_llmrank.scorers.label_head.logit_scales`) applied inside the
    model's forward would be skipped.
    """
    from haystack_llmrank.scorers.label_head import final_softcap, logit_scales

    config = lm.config
    rescaled = list(logit_scales(config))
    if final_softcap(config) is not None:
        rescaled.append("final_logit_softcapping")
    if rescaled:
        recorded = text_config(config)
        applied = ", ".join(f"{name}={getattr(recorded, name)}" for name in rescaled)
        raise ValueError(
            f"training reads logits from the output head directly, and this model's "
            f"forward also applies {applied}; it is not supported"
        )
    head = lm.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(lm).__name__} has no output head to read label logits from")
    return head


def trainable_parameters(model: Any) -> int:
    """How many parameters receive gradients."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


_ADAPTER_WEIGHTS = ("adapter_config.json", "adapter_model.safetensors")
"""What an adapter folder holds that a folder of full weights does not."""
_FULL_WEIGHTS = ("config.json", "generation_config.json", "model*.safetensors*")
"""What a folder of full weights holds that an adapter folder does not (shards, index)."""


def recordable_base(model: str) -> str:
    """How an adapter records its base model ``model``: the embedded base's name (which
    :func:`~haystack_llmrank.models.resolve_model` reads before any folder of that name) and
    hub ids as given, a local base by absolute path (so the adapter loads from anywhere)."""
    local = Path(model).expanduser()
    if model == EMBEDDED_BASE or not local.exists():
        return model
    return str(local.resolve())


def save_trained(
    model: Any, tokenizer: Any, folder: Path, *, base_model: str, template: PromptTemplate
) -> None:
    """Save an adapter folder that names ``base_model``, or full weights with the tokenizer,
    and the prompt ``template`` the model was trained with (``llmrank_template.json``).

    An adapter's ``adapter_config.json`` records ``base_model`` as an llmrank model
    reference (``smollm2-135m-instruct``, a Hugging Face id, a local base by absolute path:
    :func:`recordable_base`), so that loading the folder resolves its base the same way
    every other model is resolved, from any working directory, and so does the model card
    that peft writes (``README.md``). The weights of the other kind that the folder held are
    removed, so that it loads what was saved; the weights saved take the modes the umask
    allows (safetensors writes them owner-only), so that other users can load the folder.
    """
    folder.mkdir(parents=True, exist_ok=True)
    write_template(folder, template)
    adapter = hasattr(model, "peft_config")
    for pattern in _FULL_WEIGHTS if adapter else _ADAPTER_WEIGHTS:
        for stale in folder.glob(pattern):
            stale.unlink()
    with _no_transformers_progress_bars():
        model.save_pretrained(folder)
    if adapter:
        base = recordable_base(base_model)
        config_path = folder / "adapter_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = base
        config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        _name_base_in_card(folder / "README.md", base)
    else:
        tokenizer.save_pretrained(folder)
    umask_modes(folder.glob("*.safetensors"))


@contextlib.contextmanager
def _no_transformers_progress_bars() -> Iterator[None]:
    """Hide transformers' progress bars (``Writing model shards``, which would print inside
    ``llmrank train``'s own) while in the block, then restore the setting as it was."""
    from transformers.utils import logging as transformers_logging

    # the flag alone: disable_progress_bar() would also reset huggingface_hub's settings;
    # a transformers without it shows its bars rather than failing the save
    active = getattr(transformers_logging, "_tqdm_active", None)
    if active is None:
        yield
        return
    transformers_logging._tqdm_active = False
    try:
        yield
    finally:
        transformers_logging._tqdm_active = active


_ADAPTER_TAG = "base_model:adapter:"
"""The start of the model card tag by which peft names an adapter's base."""


def _name_base_in_card(card_path: Path, base: str) -> None:
    """Make the model card that peft writes at ``card_path`` name ``base``, as
    ``adapter_config.json`` does, not the folder the base was loaded from (a GGUF cache)."""
    if not card_path.is_file():  # a peft that writes no card
        return
    from huggingface_hub import ModelCard

    card = ModelCard.load(card_path)
    card.data.base_model = base
    card.data.tags = [
        _ADAPTER_TAG + base if tag.startswith(_ADAPTER_TAG) else tag for tag in card.data.tags or []
    ]
    card.save(card_path)
