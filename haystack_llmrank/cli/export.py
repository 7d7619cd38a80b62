"""``llmrank export``: write a model's label-logit graph as a self-contained ONNX folder."""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

from haystack_llmrank.cli.options import plural, positive_int, template_option
from haystack_llmrank.export.onnx_folder import DEFAULT_OPSET, OPSETS
from haystack_llmrank.scorers.onnx_metadata import ATTENTION_CHOICES, EXPORTERS, PRECISIONS


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``export`` options and handler to ``parser``."""
    parser.description = (
        "Export MODEL ('default' for the embedded FIRST-trained SmolLM2, a HF id or folder, "
        "an adapter folder or a .gguf) "
        "as OUT_DIR: model.onnx (input_ids, attention_mask -> label_logits [batch, K]), "
        "the tokenizer and llmrank.json. Load it with --backend onnx --model OUT_DIR."
    )
    parser.add_argument("model", help="'default', a HF id or folder, or a .gguf file")
    parser.add_argument(
        "out_dir",
        type=Path,
        help="folder to write: new, empty, or (with --overwrite) holding an earlier export only",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp32; fp16 for CUDA; int8 (8-bit weights) for a smaller model (on CUDA with "
        "--attention plain)",
    )
    parser.add_argument(
        "--template",
        type=template_option,
        default=None,
        help="prompt template whose labels the graph scores and that loading it uses: first "
        "([A]..), first-numeric ([1]..), first-echo, first-judge, judge, or a .json file of a "
        "template's fields "
        "(default: the one MODEL was trained with, else first)",
    )
    parser.add_argument(
        "--vote",
        default=None,
        metavar="TOKEN",
        help="read the template by this one token's logit at the end of each passage's line "
        "(e.g. ' yes'): the graph then takes the positions to read at",
    )
    supported = ", ".join(f"{low}-{high} for {name}" for name, (low, high) in OPSETS.items())
    parser.add_argument(
        "--opset",
        type=positive_int,
        default=DEFAULT_OPSET,
        help=f"ONNX opset: {supported} (default %(default)s)",
    )
    parser.add_argument(
        "--no-optimize",
        dest="optimize",
        action="store_false",
        help="skip the saved ONNX Runtime graph optimisations",
    )
    parser.add_argument(
        "--exporter",
        choices=EXPORTERS,
        default="torchscript",
        help="torch.onnx exporter: torchscript (default; fused attention) or dynamo",
    )
    parser.add_argument(
        "--attention",
        choices=ATTENTION_CHOICES,
        default="auto",
        help=(
            "fused: one ONNX Runtime attention node per layer (torchscript exporter); "
            "auto: fused where the model allows it; plain: standard operators"
        ),
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing export in OUT_DIR (a folder that also holds anything else "
        "is refused)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Export and print where the folder is and what it holds."""
    from haystack_llmrank.export import export_onnx, read_metadata

    started = time.perf_counter()
    try:
        folder = export_onnx(
            args.model,
            args.out_dir,
            precision=args.precision,
            template=args.template,
            vote=args.vote,
            opset=args.opset,
            optimize=args.optimize,
            exporter=args.exporter,
            attention=args.attention,
            overwrite=args.overwrite,
        )
    except ImportError as exc:
        raise RuntimeError(str(exc)) from exc
    metadata = read_metadata(folder, verify_hashes=False)
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    print(
        f"exported {metadata.source_model} ({metadata.precision}, {metadata.attention} "
        f"attention, template "
        f"{metadata.template['name']!r}, {plural(len(metadata.label_ids), 'label')}) to {folder} "
        f"in {time.perf_counter() - started:.1f} s ({size / 2**20:.0f} MiB)"
    )
    print(f"load it with --backend onnx --model {shlex.quote(str(folder))}")
    return 0
