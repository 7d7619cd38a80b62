"""Offline optimisation and precision conversion of an exported label-logit graph.

- ``optimize_graph``: ONNX Runtime's basic (provider-independent) graph optimisations,
  saved once so every load skips them; provider-specific fusions happen at session creation.
- ``fp16``: every float tensor in float16 except the declared inputs and outputs
  (``label_logits`` stays float32), the rotary position subgraph (positions times
  frequencies, then ``Sin``/``Cos``) and the label head from its matrix product on; meant
  for the CUDA execution provider. Converted from the file, so graphs over protobuf's 2 GiB
  limit convert too.
- ``int8``: weight-only 8-bit ``MatMulNBits`` (blocks of 32, symmetric, float32 compute)
  on every weight MatMul of the decoder; the label head stays float32.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from haystack_llmrank.scorers.onnx_metadata import DATA_FILE, GRAPH_FILE, OUTPUT_NAME

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


def _producers(model: Any) -> dict[str, Any]:
    return {output: node for node in model.graph.node for output in node.output}


def _float_tensors(model: Any) -> set[str]:
    """Names of the float32 tensors whose type the graph declares (after shape inference)."""
    import onnx

    float32 = onnx.TensorProto.FLOAT
    graph = model.graph
    typed = [*graph.input, *graph.output, *graph.value_info]
    names = {v.name for v in typed if v.type.tensor_type.elem_type == float32}
    return names | {t.name for t in graph.initializer if t.data_type == float32}


def rotary_nodes(model: Any) -> list[str]:
    """Names of the nodes that compute rotary angles and their ``Sin``/``Cos``.

    Walks back from every ``Sin`` and ``Cos`` through float tensors, and stops at the
    ``Cast`` that turns integer positions into floats.
    """
    producers, floats = _producers(model), _float_tensors(model)
    found: dict[str, None] = {}
    pending = [node for node in model.graph.node if node.op_type in ("Sin", "Cos")]
    while pending:
        node = pending.pop()
        if node.name in found:
            continue
        found[node.name] = None
        if node.op_type == "Cast":
            continue
        for name in node.input:
            producer = producers.get(name)
            if producer is not None and name in floats:
                pending.append(producer)
    return list(found)


def label_head_tail(model: Any) -> list[str]:
    """The label-head product and every float node after it up to ``label_logits``."""
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    floats = _float_tensors(model) | {OUTPUT_NAME}
    head = label_head_nodes(model)
    by_name = {node.name: node for node in model.graph.node}
    found: dict[str, None] = {}
    pending = [by_name[name] for name in head]
    while pending:
        node = pending.pop()
        if node.name in found:
            continue
        found[node.name] = None
        for name in node.output:
            if name in floats:
                pending.extend(consumers.get(name, []))
    return list(found)


def fp32_nodes(model: Any) -> list[str]:
    """The nodes an fp16 export keeps in float32: rotary angles and the label head.

    Unnamed nodes get a unique name first, since the converter keeps nodes by name.
    """
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"llmrank_unnamed_{index}"
    return [*rotary_nodes(model), *label_head_tail(model)]


def _bypass_fp16_round_trips(model: Any, fp32: Iterable[str]) -> int:
    """Feed float32 consumers of a float32 node its output directly, not through fp16.

    The converter casts the output of a kept node to float16 and back to float32 before the
    next kept node (or the float32 graph output). Each such ``Cast(to float32)`` becomes an
    ``Identity`` of the float32 value; casts left without consumers are removed. Returns how
    many round trips were bypassed.
    """
    import onnx

    kept, producers = set(fp32), _producers(model)
    bypassed = 0
    for node in model.graph.node:
        if node.op_type != "Cast" or _cast_target(node) != onnx.TensorProto.FLOAT:
            continue
        narrowing = producers.get(node.input[0])
        if narrowing is None or narrowing.op_type != "Cast":
            continue
        source = producers.get(narrowing.input[0])
        if _cast_target(narrowing) != onnx.TensorProto.FLOAT16 or source is None:
            continue
        if source.name not in kept:
            continue
        node.op_type = "Identity"
        del node.attribute[:]
        node.input[0] = narrowing.input[0]
        bypassed += 1
    used = {name for node in model.graph.node for name in node.input}
    used |= {output.name for output in model.graph.output}
    live = [
        node
        for node in model.graph.node
        if node.op_type != "Cast" or any(name in used for name in node.output)
    ]
    _replace(model.graph.node, live)
    return bypassed


def _replace(field: Any, items: list[Any]) -> None:
    """Set a repeated message field to copies of ``items`` (which may be its own elements)."""
    copies = [type(item)() for item in items]
    for copy, item in zip(copies, items, strict=True):
        copy.CopyFrom(item)
    del field[:]
    field.extend(copies)


def sort_topologically(model: Any) -> None:
    """Order the graph's nodes so that each comes after the producers of its inputs.

    The converter appends its casts at the end of the node list; ONNX requires this order.
    Nodes keep their relative order where the data allows it.
    """
    graph = model.graph
    ready = {""} | {v.name for v in graph.input} | {t.name for t in graph.initializer}
    pending = list(graph.node)
    ordered: list[Any] = []
    while pending:
        waiting = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            names = [node.name for node in waiting[:3]]
            raise RuntimeError(f"the graph has a cycle or a missing input at {names}")
        pending = waiting
    _replace(graph.node, ordered)


def _cast_target(node: Any) -> int | None:
    return next((int(a.i) for a in node.attribute if a.name == "to"), None)


def to_fp16(source: Path) -> Any:
    """The graph at ``source`` in float16, keeping its inputs, outputs and :func:`fp32_nodes`.

    Shape inference runs on the file (``infer_shapes_path``), never on a serialised proto, so
    graphs whose weights exceed protobuf's 2 GiB limit (in external data) convert too.
    """
    import onnx
    from onnx.shape_inference import infer_shapes_path
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # Written beside the source, so that its external data paths still resolve.
    inferred = source.with_name(f".{source.name}.inferred")
    try:
        infer_shapes_path(str(source), str(inferred))
        model = onnx.load(str(inferred))
    finally:
        inferred.unlink(missing_ok=True)
    fp32 = fp32_nodes(model)
    converted = convert_float_to_float16(
        model, keep_io_types=True, disable_shape_infer=True, node_block_list=fp32
    )
    merged = merge_duplicate_nodes(converted)
    bypassed = _bypass_fp16_round_trips(converted, fp32)
    sort_topologically(converted)
    logger.info(
        "fp16: %d nodes kept in float32, %d round trips bypassed, %d duplicate casts merged",
        len(fp32),
        bypassed,
        merged,
    )
    return converted


def merge_duplicate_nodes(model: Any) -> int:
    """Keep one of each set of identical nodes (same name, operator, inputs, outputs and
    attributes), and one ``value_info`` per tensor name. Returns how many nodes were dropped.

    onnxruntime's float16 converter before 1.32 (seen in 1.27 to 1.31) writes one ``Cast`` to
    float32 for each float32 consumer of a float16 tensor, all with the same name and output;
    ONNX Runtime refuses a graph with two producers of one tensor. 1.32 writes one shared cast.
    """
    graph = model.graph
    seen: set[bytes] = set()
    nodes = []
    for node in graph.node:
        key = node.SerializeToString(deterministic=True)
        if key not in seen:
            seen.add(key)
            nodes.append(node)
    dropped = len(graph.node) - len(nodes)
    if dropped:
        _replace(graph.node, nodes)
        infos = {info.name: info for info in graph.value_info}
        _replace(graph.value_info, list(infos.values()))
    return dropped


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


def convert_precision(source: Path, precision: str) -> Any:
    """The graph at ``source`` (with its external data) converted to ``precision``."""
    import onnx

    if precision == "fp16":
        return to_fp16(source)
    model = onnx.load(str(source))
    return to_int8(model) if precision == "int8" else model


def drop_default_attributes(model: Any) -> int:
    """Remove attributes of ONNX Runtime's own operators that hold their schema's default.

    ONNX Runtime's optimised re-save writes every default attribute of its version's
    schema, and older runtimes reject the ones they do not know. Without them, the graph
    means the same to every runtime that has the operator. Returns how many were removed.
    """
    from onnx.helper import get_attribute_value

    def is_default(attribute: Any, default: Any) -> bool:
        if default is None or attribute.type != default.type:
            return False
        return bool(get_attribute_value(attribute) == get_attribute_value(default))

    defaults = _contrib_defaults()
    dropped = 0
    for node in model.graph.node:
        schema = defaults.get((node.domain, node.op_type), {})
        kept = [a for a in node.attribute if not is_default(a, schema.get(a.name))]
        if len(kept) != len(node.attribute):
            dropped += len(node.attribute) - len(kept)
            _replace(node.attribute, kept)
    return dropped


def _contrib_defaults() -> dict[tuple[str, str], dict[str, Any]]:
    """``(domain, op_type) -> {attribute: default AttributeProto}`` of ONNX Runtime's operators.

    Empty (logged) where this onnxruntime does not expose its schemas.
    """
    import onnx
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    try:
        schemas = state.get_all_operator_schema()
    except AttributeError:
        logger.info("this onnxruntime lists no operator schemas; default attributes are kept")
        return {}
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for schema in schemas:
        if schema.domain in ("", "ai.onnx"):
            continue
        entry = table.setdefault((schema.domain, schema.name), {})
        for name, spec in schema.attributes.items():
            default = getattr(spec, "_default_value", b"")
            if default:
                entry[name] = onnx.AttributeProto.FromString(default)
    return table


def tensor_bytes(model: Any) -> int:
    """Serialized size of the graph's initializers."""
    return sum(tensor.ByteSize() for tensor in model.graph.initializer)


def save_graph(model: Any, folder: Path) -> None:
    """Write ``model.onnx`` into ``folder``, with ``model.onnx.data`` when it is large.

    Default attributes of ONNX Runtime's operators are dropped first
    (:func:`drop_default_attributes`).
    """
    import onnx

    dropped = drop_default_attributes(model)
    if dropped:
        logger.info("dropped %d default attributes of ONNX Runtime operators", dropped)
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
