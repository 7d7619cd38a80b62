"""Compare ONNX export variants on real DL19 windows: time per window and fidelity to torch.

    python examples/onnx_variants.py --export-dir runs/onnx-variants --json runs/variants.json

Exports the model four ways (fp32 with fused attention, fp32 with plain attention, int8 with
fused attention, and, for measurement only, the fused fp32 graph with dynamic int8 activations;
``--variants`` picks some), scores the same windows (in the template the
model was trained with, else FIRST's) one call a window with each, and prints, per
variant: seconds per window, the largest label-logit difference from the torch scorer,
Kendall's tau of the window's labels against torch, and how many windows are ordered exactly
as torch orders them. A template with a vote is read by its votes: the vote's logit at each
passage line's end stands in for the label logits. Windows are the bottom, middle and top
windows (positions 80, 40 and 0 of the BM25 top-100) of the first queries, as the sliding
window scores them first: 20 passages, or as many as the template has labels. A template of
one passage a window (``judge``) scores each of the 20 in a prompt of its own, the 20 prompts
in one batch, and its window's figures are over those 20 votes.

With ``--profile``, each variant also scores the longest prompt once under ONNX Runtime's
profiler, and the seconds its kernels spent per operator type are printed and saved.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from haystack_llmrank.backends import load_scorer
from haystack_llmrank.bench.config import default_data_dir
from haystack_llmrank.bench.report import environment
from haystack_llmrank.bench.runner import check_reusable
from haystack_llmrank.cli.options import add_passage_words_option, positive_int
from haystack_llmrank.data import read_queries
from haystack_llmrank.export import export_onnx, is_export
from haystack_llmrank.export.precision import label_head_nodes
from haystack_llmrank.model_templates import model_template
from haystack_llmrank.prompt import (
    PassageWords,
    Prompt,
    PromptBuilder,
    PromptTemplate,
    resolve_passage_words,
)
from haystack_llmrank.scorers.onnx_loading import load_export
from haystack_llmrank.scorers.onnx_metadata import (
    GRAPH_FILE,
    METADATA_FILE,
    graph_hashes,
    graph_inputs,
    read_metadata,
)
from haystack_llmrank.scorers.onnx_scorer import CPU_PROVIDER
from haystack_llmrank.scorers.padding import pad_inputs

VARIANTS: dict[str, dict[str, Any]] = {
    "fp32-fused": {"precision": "fp32", "attention": "fused"},
    "fp32-plain": {"precision": "fp32", "attention": "plain"},
    "int8-fused": {"precision": "int8", "attention": "fused"},
}
DYNAMIC = "int8-dynamic"
"""Not an export precision: made here from ``fp32-fused`` with ``quantize_dynamic``."""
WINDOW_STARTS = (80, 40, 0)
WINDOW = 20

Window = list[Prompt]
"""The prompts that score one window's passages: one, or one a passage for a template of one
passage a window."""


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-a of two score vectors (ties count as discordant)."""
    i, j = np.triu_indices(len(a), k=1)
    agree = np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])
    return float(agree.mean())


def window_prompts(
    tokenizer: Any, template: PromptTemplate, data: Path, count: int, words: PassageWords
) -> list[Window]:
    """``count`` windows in ``template``, three per query, ``words`` words a passage: each of
    :data:`WINDOW` passages (or the template's labels where fewer) in one prompt, or in one
    prompt each where the template holds one passage."""
    builder = PromptBuilder(tokenizer, template, max_prompt_tokens=8192, max_passage_words=words)
    size = min(WINDOW, len(template.labels))  # passages a prompt
    span = WINDOW if size == 1 else size  # passages a window
    windows: list[Window] = []
    for query in read_queries(data / "candidates.jsonl"):
        texts = [c.text for c in query.candidates]
        for start in WINDOW_STARTS:
            passages = texts[start : start + span]
            if len(passages) == span and len(windows) < count:
                chunks = [passages[i : i + size] for i in range(0, span, size)]
                windows.append([builder.build(query.query, chunk) for chunk in chunks])
        if len(windows) == count:
            break
    return windows


def dynamic_int8(fp32: Path, folder: Path) -> None:
    """A copy of the ``fp32`` export whose weight MatMuls take int8 weights and int8
    activations quantized per tensor at run time; the label head stays float32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    excluded = label_head_nodes(onnx.load(str(fp32 / GRAPH_FILE), load_external_data=False))
    shutil.copytree(fp32, folder, ignore=shutil.ignore_patterns(GRAPH_FILE, METADATA_FILE))
    quantize_dynamic(
        fp32 / GRAPH_FILE,
        folder / GRAPH_FILE,
        op_types_to_quantize=["MatMul"],
        weight_type=QuantType.QInt8,
        nodes_to_exclude=excluded,
    )
    metadata = read_metadata(fp32)
    dataclasses.replace(metadata, precision=DYNAMIC, files=graph_hashes(folder)).write(folder)


def exported(model: str, root: Path, name: str, template: PromptTemplate) -> Path:
    """The export of variant ``name`` of ``model`` in ``root/name``: the one there when it
    was made from ``model``'s current weights as the variant asks (else ``ValueError``),
    or a new one."""
    folder = root / name
    variant = VARIANTS[name]
    if not is_export(folder):
        return export_onnx(model, folder, template=template, **variant)
    check_reusable(folder, model, variant["precision"], template, attention=variant["attention"])
    return folder


def check_variants(model: str, root: Path, names: list[str], template: PromptTemplate) -> None:
    """Raise ``ValueError`` where an export already in ``root`` for one of the variants
    ``names`` (for ``int8-dynamic`` without one, the ``fp32-fused`` export it is made from)
    is not that variant of ``model``'s current weights, as :func:`exported` would later."""
    for name in names:
        folder = root / name
        if name == DYNAMIC and is_export(folder):
            check_reusable(folder, model, DYNAMIC, template, attention="fused")
            continue
        source = "fp32-fused" if name == DYNAMIC else name
        if is_export(root / source):
            variant = VARIANTS[source]
            check_reusable(
                root / source, model, variant["precision"], template, attention=variant["attention"]
            )


def score_one(scorer: Any, window: Window) -> np.ndarray:
    """The window's label logits, or its votes where its prompts record vote positions (one
    call: a batch of its prompts)."""
    ids = [prompt.token_ids for prompt in window]
    if window[0].score_positions:
        at = [prompt.score_positions for prompt in window]
        votes = scorer.score_at(ids, at)[:, :, 0]
        return np.concatenate([row[: len(p)] for row, p in zip(votes, at, strict=True)])
    return np.asarray(scorer.score(ids)[0][:WINDOW])  # a label readout's one prompt


def score_each(scorer: Any, windows: list[Window]) -> tuple[np.ndarray, float]:
    """Label logits (or votes) of each window (one call each) and the mean seconds a window."""
    score_one(scorer, windows[0])  # warm-up
    logits: list[np.ndarray] = []
    seconds: list[float] = []
    for window in windows:
        start = time.perf_counter()
        logits.append(score_one(scorer, window))
        seconds.append(time.perf_counter() - start)
    return np.array(logits), float(np.mean(seconds))


def operator_seconds(graph: Path, prompt: Prompt, threads: int) -> dict[str, float]:
    """Kernel seconds per operator type of one profiled CPU run of ``prompt``, largest
    first."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as scratch:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "ort")
        session = ort.InferenceSession(str(graph), options, providers=[CPU_PROVIDER])
        at = [prompt.score_positions] if prompt.score_positions else None
        arrays = pad_inputs([prompt.token_ids], 0, at)
        session.run(None, dict(zip(graph_inputs(at is not None), arrays, strict=True)))
        trace = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
    seconds: Counter[str] = Counter()
    for event in trace:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            seconds[event["args"]["op_name"]] += event["dur"] / 1e6
    return dict(seconds.most_common())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="'default', a HF folder or a .gguf")
    parser.add_argument("--data", type=Path, default=default_data_dir())
    parser.add_argument("--windows", type=positive_int, default=6)
    parser.add_argument(
        "--threads", type=positive_int, default=2, help="CPU threads (torch and ONNX)"
    )
    parser.add_argument("--export-dir", type=Path, required=True, help="exports are kept here")
    parser.add_argument("--json", type=Path, default=None, help="also save the results here")
    parser.add_argument(
        "--variants",
        default=",".join([*VARIANTS, DYNAMIC]),
        help=f"comma-separated, of {', '.join([*VARIANTS, DYNAMIC])} (default: all)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="profile the longest prompt per variant"
    )
    add_passage_words_option(parser)
    args = parser.parse_args()
    names = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = sorted(set(names) - {*VARIANTS, DYNAMIC})
    if unknown or not names:
        parser.error(f"--variants: unknown {', '.join(unknown) or '(none given)'}")
    template = model_template(None, args.model)  # the one the model was trained with
    try:
        check_variants(args.model, args.export_dir, names, template)  # before any timing
    except ValueError as exc:
        parser.error(str(exc))

    import torch

    torch.set_num_threads(args.threads)
    reference = load_scorer(args.model, device="cpu", labels=template.labels, vote=template.vote)
    windows = window_prompts(
        reference.tokenizer, template, args.data, args.windows, args.max_passage_words
    )
    expected, torch_seconds = score_each(reference.scorer, windows)
    order = np.argsort(-expected, axis=1, kind="stable")
    lengths = [sum(len(p.token_ids) for p in window) for window in windows]
    per_window = len(windows[0])
    print(
        f"{len(windows)} windows of {min(lengths)}-{max(lengths)} tokens "
        f"({per_window} prompt{'s' if per_window > 1 else ''} each), one call a window, "
        f"{args.threads} threads; torch: {torch_seconds:.2f} s/window"
    )
    results: dict[str, Any] = {
        "command": shlex.join(["python", *sys.argv]),
        "environment": environment("cpu"),  # every variant runs on ONNX Runtime's CPU provider
        "model": args.model,
        "template": template.name,
        "vote": template.vote,
        "max_passage_words": resolve_passage_words(args.max_passage_words, template),
        "windows": len(windows),
        "prompts_per_window": per_window,
        "tokens": lengths,
        "torch_seconds_per_window": torch_seconds,
        "variants": {},
    }
    print(
        f"{'variant':12s} {'s/window':>9s} {'x torch':>9s} {'max diff':>9s} "
        f"{'tau':>6s} {'same order':>10s}"
    )
    for name in names:
        folder = args.export_dir / name
        if name == DYNAMIC and not is_export(folder):
            dynamic_int8(exported(args.model, args.export_dir, "fp32-fused", template), folder)
        elif name == DYNAMIC:
            check_reusable(folder, args.model, DYNAMIC, template, attention="fused")
        else:
            exported(args.model, args.export_dir, name, template)
        scorer = load_export(folder, device="cpu", intra_op_num_threads=args.threads).scorer
        got, seconds = score_each(scorer, windows)
        same = int((np.argsort(-got, axis=1, kind="stable") == order).all(axis=1).sum())
        row: dict[str, Any] = {
            "seconds_per_window": seconds,
            "max_abs_diff": float(np.abs(got - expected).max()),
            "kendall_tau": float(
                np.mean([kendall_tau(g, e) for g, e in zip(got, expected, strict=True)])
            ),
            "same_order": same,
        }
        results["variants"][name] = row
        print(
            f"{name:12s} {seconds:9.2f} {seconds / torch_seconds:8.2f}x "
            f"{row['max_abs_diff']:9.2g} {row['kendall_tau']:6.3f} {same:>6d}/{len(windows)}"
        )
        if args.profile:
            longest = max((p for w in windows for p in w), key=lambda p: len(p.token_ids))
            ops = operator_seconds(folder / GRAPH_FILE, longest, args.threads)
            row["profile"] = {"tokens": len(longest.token_ids), "operator_seconds": ops}
            total = sum(ops.values())
            shares = ", ".join(f"{op} {100 * t / total:.0f}%" for op, t in list(ops.items())[:4])
            tokens = len(longest.token_ids)
            print(f"{'':12s} profile, {tokens} tokens, {total:.2f} s in kernels: {shares}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
