"""The prompt template a model folder was trained or exported with, and picking the one to use.

A model ranks well only with the prompt it learned. ``llmrank train`` writes its template to
``llmrank_template.json`` in the output folder (adapter or full weights) and ``llmrank
export`` to ``llmrank.json``; loading a model with no template named uses the recorded one,
and FIRST's otherwise.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from haystack_llmrank.errors import ModelResolutionError
from haystack_llmrank.models import DEFAULT_MODEL, adapter_folder, resolve_model
from haystack_llmrank.prompt import FIRST_TEMPLATE, PromptTemplate, get_template
from haystack_llmrank.scorers.onnx_metadata import METADATA_FILE

logger = logging.getLogger(__name__)

TEMPLATE_FILE = "llmrank_template.json"
"""File in a trained model folder with :meth:`PromptTemplate.to_dict` of its template."""

TemplateChoice = str | PromptTemplate | dict[str, Any] | None


def write_template(folder: Path, template: PromptTemplate) -> None:
    """Record ``template`` as the one the model in ``folder`` was trained with."""
    (folder / TEMPLATE_FILE).write_text(json.dumps(template.to_dict(), indent=1) + "\n", "utf-8")


def _read(file: Path, key: str | None = None) -> PromptTemplate | None:
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        return get_template(data[key] if key else data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelResolutionError(f"cannot read the prompt template in {file}: {exc}") from exc


def recorded_template(model: str | None) -> PromptTemplate | None:
    """The template recorded with ``model``, or ``None`` where it records none.

    Read from the adapter folder ``model`` names (the default's too), whether or not its
    base can be resolved, then from the folder ``model`` resolves to: a trained folder, an
    adapter's base, an ONNX export folder. Hub ids and GGUF files record none; neither does
    another reference that cannot be resolved (loading it reports why).
    """
    found = _recorded(model)
    return None if found is None else found[0]


def _recorded(model: str | None) -> tuple[PromptTemplate, bool] | None:
    """:func:`recorded_template`'s template, and whether an ONNX export's metadata records it."""
    folders = [adapter_folder(model)]
    with contextlib.suppress(ModelResolutionError):
        folders.append(Path(resolve_model(model).location))
    for folder in folders:
        if folder is None or not folder.is_dir():
            continue
        trained = _read(folder / TEMPLATE_FILE)
        if trained is not None:
            return trained, False
        exported = _read(folder / METADATA_FILE, "template")
        if exported is not None:
            return exported, True
    return None


def model_template(
    template: TemplateChoice,
    model: str | None,
    *,
    vote: str | None = None,
    flags: bool = False,
    warn: bool = True,
) -> PromptTemplate:
    """``template`` when given, else the one recorded with ``model``, else FIRST's; read by
    ``vote`` where given (see :meth:`~haystack_llmrank.prompt.PromptTemplate.with_vote`).

    A given template (or vote) that differs from the recorded one is used, with a warning
    (unless ``warn`` is false: a check before the load that warns): the model was trained
    on other prompts or another readout. A given template that
    records no passage length takes the recorded one's
    (:attr:`~haystack_llmrank.prompt.PromptTemplate.max_passage_words`). An ONNX export's
    graph scores its template's readout only (its labels, or its vote): another readout is
    refused with :class:`ModelResolutionError`, before anything is logged, in a message
    that names the command line's ``--template`` and ``--vote`` with ``flags``, else the
    keywords.
    """
    found = _recorded(model)
    recorded, exported = (None, False) if found is None else found
    chosen = (recorded or FIRST_TEMPLATE) if template is None else get_template(template)
    if vote is not None:
        chosen = chosen.with_vote(vote)
    if recorded is not None and chosen.max_passage_words is None:
        chosen = replace(chosen, max_passage_words=recorded.max_passage_words)
    if recorded is None or recorded == chosen:
        return chosen
    name = DEFAULT_MODEL if model is None else model
    if exported and _readout(recorded) != _readout(chosen):
        given = [
            key for key, value in (("template", template), ("vote", vote)) if value is not None
        ]
        raise _other_readout(name, recorded, chosen, given, flags)
    if not warn:
        return chosen
    readouts = recorded.vote != chosen.vote
    logger.warning(
        "%s was trained with template %s; ranking with %s as asked",
        name,
        _described(recorded, readouts),
        _described(chosen, readouts),
    )
    return chosen


def _other_readout(
    export: str, recorded: PromptTemplate, chosen: PromptTemplate, given: list[str], flags: bool
) -> ModelResolutionError:
    """The refusal of ``chosen``'s readout for ``export``, recorded with ``recorded``, whose
    fix is to unset the options ``given`` (named as flags with ``flags``)."""
    if flags:
        unset = "drop " + " and ".join(f"--{key}" for key in given)
    else:
        unset = "load it with " + " and ".join(f"{key}=None" for key in given)
    return ModelResolutionError(
        f"{export} is an ONNX export for template {_described(recorded, True)}, and its graph "
        f"scores that readout only, not the requested {_described(chosen, True)}; {unset} to "
        "rank with the template it records, or export the model again with the template you "
        "want"
    )


def _readout(template: PromptTemplate) -> tuple[str, ...]:
    """What a scorer reads for ``template``: its vote, or its labels."""
    return template.labels if template.vote is None else (template.vote,)


def _described(template: PromptTemplate, readout: bool) -> str:
    """``template``'s name for a message, and with ``readout``, how it is read."""
    if not readout:
        return repr(template.name)
    how = "its labels" if template.vote is None else f"the vote {template.vote!r}"
    return f"{template.name!r} read by {how}"
