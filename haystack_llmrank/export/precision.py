"""Offline optimisation and precision conversion of an exported label-logit graph.

- ``optimize_graph``: ONNX Runtime's basic (provider-independent) graph optimisations,
  saved once so every load skips them; provider-specific fusions happen at session creation.
- ``fp16``: every float tensor in float16 except the declared inputs and outputs
  (``label_logits`` stays float32); meant for the CUDA execution provider.
- ``int8``: weight-only 8-bit ``MatMulNBits`` (blocks of 32, symmetric, float32 compute)
  on every weight MatMul of the decoder; the label head stays float32.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from haystack_llmrank.export.metadata import DATA_FILE, GRAPH_FILE, OUTPUT_NAME

logger = logging.getLogger(__name__)

EXTERNAL_DATA_BYTES = 1 << 30
"""Graphs whose tensors exceed this are saved with external data (protobuf caps a file at 2 GiB)."""
INT8_BLOCK_SIZE = 32
INT8_ACCURACY_LEVEL = 0
"""ONNX Runtime's default compute type for MatMulNBits (float32 on CPU). Level 4 (int8
activations) was slower and moved more orderings on an AVX2 CPU without VNNI."""
QUANTIZER_MODULE = "onnxruntime.quantization.matmul_nbits_quantizer"


def optimize_graph(source: Path, target: Path) -> None:
    """Save ``source`` after ONNX Runtime's basic graph optimisations as ``target``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(target)
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_file_name", DATA_FILE
    )
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
    )
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])


def label_head_nodes(model: Any) -> list[str]:
    """Names of the MatMul/Gemm nodes nearest to ``label_logits`` (the label head).

    Walks the graph backwards from the output and stops at the first matrix product on
    each path, so the decoder's own products are never reached.
    """
    producers = {output: node for node in model.graph.node for output in node.output}
    found: list[str] = []
    seen: set[int] = set()
    pending = [OUTPUT_NAME]
    while pending:
        node = producers.get(pending.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type in ("MatMul", "Gemm"):
            found.append(node.name)
        else:
            pending.extend(node.input)
    if len(found) != 1:
        raise RuntimeError(
            f"expected one label-head matrix product before {OUTPUT_NAME}, found {found}"
        )
    return found


def to_fp16(model: Any) -> Any:
    """``model`` in float16, keeping the graph's inputs and outputs as declared."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=True)


@contextlib.contextmanager
def quiet_quantizer() -> Iterator[Any]:
    """Import the MatMulNBits quantizer without its import-time root-logger setup or chatter."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    module = importlib.import_module(QUANTIZER_MODULE)
    root.handlers[:] = handlers
    root.setLevel(level)
    chatty = logging.getLogger(QUANTIZER_MODULE)
    previous = chatty.level
    chatty.setLevel(logging.WARNING)
    try:
        yield module
    finally:
        chatty.setLevel(previous)


def to_int8(model: Any) -> Any:
    """``model`` with 8-bit weight-only ``MatMulNBits`` for every decoder weight MatMul."""
    with quiet_quantizer() as module:
        quantizer = module.MatMulNBitsQuantizer(
            model,
            bits=8,
            block_size=INT8_BLOCK_SIZE,
            is_symmetric=True,
            accuracy_level=INT8_ACCURACY_LEVEL,
            nodes_to_exclude=label_head_nodes(model),
        )
        quantizer.process()
    return quantizer.model.model


def convert_precision(model: Any, precision: str) -> Any:
    """``model`` converted to ``precision`` (``fp32`` returns it unchanged)."""
    if precision == "fp16":
        return to_fp16(model)
    if precision == "int8":
        return to_int8(model)
    return model


def tensor_bytes(model: Any) -> int:
    """Serialized size of the graph's initializers."""
    return sum(tensor.ByteSize() for tensor in model.graph.initializer)


def save_graph(model: Any, folder: Path) -> None:
    """Write ``model.onnx`` into ``folder``, with ``model.onnx.data`` when it is large."""
    import onnx

    external = tensor_bytes(model) > EXTERNAL_DATA_BYTES
    onnx.save_model(
        model,
        str(folder / GRAPH_FILE),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location=DATA_FILE,
        size_threshold=1024,
    )
    logger.info("wrote %s%s", folder / GRAPH_FILE, f" with {DATA_FILE}" if external else "")
