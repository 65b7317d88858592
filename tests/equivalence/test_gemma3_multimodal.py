"""Gemma-3 4B and up are multimodal checkpoints: ``ches`` scores them with their text model.

A tiny random ``Gemma3ForConditionalGeneration`` (a ``Gemma3Config`` whose ``text_config`` is a
2-layer Gemma-3 text model with a sliding window of 8 tokens on its first layer, and whose
``vision_config`` is a 1-layer SigLIP) is saved with ``save_pretrained``, with Gemma-3's
tokenizer, as a user's checkpoint would be. ``ches score`` with it must equal the reference
(ches_filter.reference, one pair at a time) computed on a ``Gemma3TextModel`` built here from
the checkpoint's ``text_config`` and its ``language_model`` weights, read from the safetensors
file by name: an independent way to the same text model. The test pairs are longer than the
window, and the same weights with full attention on every layer give other scores, so a
forgotten window would fail it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from ches_filter.cli.app import app
from ches_filter.data.layouts import LayoutOptions, detect_layout
from ches_filter.reference import reference_scores
from ches_filter.tokenization import PairTokenizer, TokenizationOptions

WINDOW = 8
ROWS = [
    {
        "prompt": "Write two sentences about the autumn leaves that fall in the quiet park at dusk.",
        "chosen": " Red and golden leaves drift down onto the empty benches. The path is hushed.",
        "rejected": " No.",
    },
    {
        "prompt": "What is the capital of France, and what river runs through it?",
        "chosen": " Paris is the capital of France, and the Seine runs through it.",
        "rejected": " The capital of France is Lyon, on the Rhône and the Saône rivers.",
    },
    {
        "prompt": "Say hi.",
        "chosen": " Hi there! It is nice to meet you; how can I help you today?",
        "rejected": " Hello, hello, hello, hello, hello, hello, hello, hello, hello.",
    },
]
SCORES = ("ches", "ln_ches", "last_hidden_inner", "dot_chosen_rejected", "sq_norm_chosen",
          "sq_norm_rejected")  # fmt: skip


@pytest.fixture(scope="module")
def multimodal_dir(tiny_gemma_dir: Path, tmp_path_factory) -> Path:
    import torch
    from transformers import AutoTokenizer, Gemma3Config, Gemma3ForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_gemma_dir))  # Gemma-3's, from conftest
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "sliding_window": WINDOW,  # shorter than every test sequence
        "layer_types": ["sliding_attention", "full_attention"],
        "max_position_embeddings": 2048,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    vision_config = {
        "model_type": "siglip_vision_model",
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 28,
        "patch_size": 14,
    }
    config = Gemma3Config(text_config=text_config, vision_config=vision_config, mm_tokens_per_image=4)
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(config)
    folder = tmp_path_factory.mktemp("tiny-gemma3-multimodal")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    saved = json.loads((folder / "config.json").read_text())
    assert saved["architectures"] == ["Gemma3ForConditionalGeneration"]
    assert "hidden_size" not in saved and saved["text_config"]["hidden_size"] == 32
    return folder


def text_model(folder: Path, **overrides):
    """The checkpoint's language model, built from its text_config and loaded by weight name."""
    import torch
    from safetensors import safe_open
    from transformers import Gemma3Config, Gemma3TextModel

    config = Gemma3Config.from_pretrained(str(folder)).text_config
    for key, value in overrides.items():
        setattr(config, key, value)
    config._attn_implementation = "eager"  # the plainest one: no fused kernel, no mask tricks
    prefix = "language_model.model."  # how save_pretrained (and the hub checkpoints) name them
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        names = [name for name in handle.keys() if name.startswith(prefix)]  # noqa: SIM118 - not iterable
        state = {name.removeprefix(prefix): handle.get_tensor(name) for name in names}
    model = Gemma3TextModel(config).to(torch.float32)
    model.load_state_dict(state, strict=True)  # every weight of the text model, nothing else
    return model.eval()


def tokenized(folder: Path):
    from transformers import AutoTokenizer

    layout = detect_layout(list(ROWS[0]), ROWS, LayoutOptions())
    tokenizer = PairTokenizer(AutoTokenizer.from_pretrained(str(folder)), TokenizationOptions())
    pairs = [tokenizer.encode(layout.extract(i, row)) for i, row in enumerate(ROWS)]
    assert all(len(p.chosen.ids) > WINDOW and len(p.rejected.ids) > WINDOW for p in pairs)
    return pairs


def tolerance(want, name: str) -> float:
    """Float32 hidden states (2 layers of width 32) carry a relative error of a few 1e-7; a sum
    over n positions and an inner product of two sums keep it near 1e-6 of the terms' size.
    ``ches``/``ln_ches`` subtract two such terms, so their error is relative to the larger
    term, not to the (possibly small) difference: 1e-5 of it leaves a 10x margin."""
    n, m = want.chosen_tokens, want.rejected_tokens
    dot, sq_plus, sq_minus = abs(want.dot_chosen_rejected), want.sq_norm_chosen, want.sq_norm_rejected
    scale = {
        "ches": max(dot, sq_plus),
        "ln_ches": max(dot / (n * m), sq_plus / (n * n)),
        "dot_chosen_rejected": max(dot, (sq_plus * sq_minus) ** 0.5),
    }.get(name, abs(getattr(want, name)))
    return 1e-5 * scale + 1e-9


@pytest.fixture(scope="module")
def reference(multimodal_dir):
    model = text_model(multimodal_dir)
    return [reference_scores(model, pair) for pair in tokenized(multimodal_dir)]


@pytest.mark.parametrize("engine", ["auto", "prefix_shared", "two_sequences"])
def test_ches_score_uses_the_text_model(multimodal_dir, reference, tmp_path, engine):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["score", str(data), "-o", str(out), "--model", str(multimodal_dir), "--device", "cpu",
         "--dtype", "float32", "--engine", engine],
    )  # fmt: skip
    assert result.exit_code == 0, (result.stdout, result.stderr)
    rows = pq.read_table(out / "data").to_pylist()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["hidden_size"] == 32
    assert manifest["engine"]["mode"] == {"auto": "packed"}.get(engine, engine)  # no fallback
    for got, want in zip(rows, reference, strict=True):
        assert got["status"] == "ok", got
        assert (got["chosen_tokens"], got["rejected_tokens"]) == (want.chosen_tokens, want.rejected_tokens)
        for name in SCORES:
            assert got[name] == pytest.approx(getattr(want, name), abs=tolerance(want, name)), (
                engine, got["row_id"], name
            )


def test_the_sliding_window_changes_the_scores(multimodal_dir, reference):
    """Full attention on both layers (the window ignored) gives scores far outside tolerance."""
    full = text_model(multimodal_dir, layer_types=["full_attention", "full_attention"])
    differs = 0
    for pair, want in zip(tokenized(multimodal_dir), reference, strict=True):
        other = reference_scores(full, pair)
        differs += abs(other.ches - want.ches) > 100 * tolerance(want, "ches")
    assert differs == len(reference)


def test_load_model_keeps_the_text_config(multimodal_dir):
    from ches_filter.model.attention import layer_windows
    from ches_filter.model.load import ModelSpec, load_model

    loaded = load_model(ModelSpec(name=str(multimodal_dir), device="cpu", dtype="float32"))
    assert type(loaded.model).__name__ == "Gemma3TextModel"
    assert loaded.hidden_size == 32 and loaded.max_positions == 2048
    assert layer_windows(loaded.model.config) == {"sliding_attention": WINDOW, "full_attention": None}
    assert not any("vision" in name for name, _ in loaded.model.named_parameters())


def test_the_text_model_gives_the_wrappers_states_for_text(multimodal_dir):
    """What makes scoring with the language model alone right: on text (no image tokens) the
    whole multimodal model's last hidden states are the language model's."""
    import torch
    from transformers import AutoModel

    from ches_filter.model.load import ModelSpec, load_model

    wrapper = AutoModel.from_pretrained(str(multimodal_dir), dtype=torch.float32).eval()
    assert type(wrapper).__name__ == "Gemma3Model"
    loaded = load_model(ModelSpec(name=str(multimodal_dir), device="cpu", dtype="float32"))
    ids = torch.tensor([tokenized(multimodal_dir)[0].chosen.ids])
    with torch.inference_mode():
        whole = wrapper(input_ids=ids).last_hidden_state
        text = loaded.model(input_ids=ids).last_hidden_state
    # The same weights through the same layers: equal up to float32 rounding of the kernels.
    torch.testing.assert_close(text, whole, rtol=1e-5, atol=1e-5)
