"""Build synthetic ``ches score`` output folders, exactly as the contract describes them.

``OUT/data/train-0000k-of-0000n.parquet`` with the original columns (unchanged, in their original
order) followed by ``SCORE_SCHEMA``'s columns, and ``OUT/manifest.json``. The scores are made up
but consistent (identical pairs have ches = ln_ches = edit_distance = 0; other non-ok statuses
have null scores), and include ties, a null and a NaN score on ``ok`` rows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pyarrow as pa

from ches_filter.data.shards import (
    MANIFEST_NAME,
    SCORE_COLUMNS,
    ShardWriter,
    output_schema,
    prepare_output_dir,
)

#: The original columns, deliberately not in alphabetical or "prompt, chosen, rejected" order.
SOURCE_SCHEMA = pa.schema(
    [
        pa.field("prompt", pa.string()),
        pa.field("rejected", pa.string()),
        pa.field("chosen", pa.string()),
        pa.field("id", pa.int64()),
        pa.field("meta", pa.struct([("lang", pa.string()), ("tags", pa.list_(pa.string()))])),
    ]
)
ORIGINAL_COLUMNS = tuple(SOURCE_SCHEMA.names)

#: row -> non-ok status in ``synthetic_rows`` (20 rows or more)
SPECIAL = {
    3: "identical",
    7: "truncated_identical",
    11: "empty_response",
    15: "invalid_field",
}
NULL_SCORE_ROW = 13  # status ok, ln_ches missing (null)
NAN_SCORE_ROW = 17  # status ok, ln_ches NaN


def _original(i: int) -> dict[str, Any]:
    return {
        "prompt": f"Question {i}: what colour is item {i}?",
        "rejected": f"Item {i} is blue, probably." + (" More words." * (i % 4)),
        "chosen": f"Item {i} is red." + (" Sure." * (i % 3)),
        "id": 1000 + i,
        "meta": {"lang": "en" if i % 2 else "fr", "tags": [f"t{i % 3}"] * (i % 3)},
    }


def score_values(i: int) -> dict[str, Any]:
    """Made-up scores for row ``i``: ln_ches ties in pairs (rows 2k and 2k+1 share a value)."""
    n_plus, n_minus = 5 + i % 7, 4 + (3 * i) % 11
    ln = round(math.sin(i // 2) * 2.0, 6)  # pairs of rows tie
    return {
        "ches": ln * n_plus * n_minus,
        "ln_ches": ln,
        "last_hidden_inner": float((i * 37) % 23),
        "edit_distance": round(((i * 13) % 17) / 17, 6),
        "dot_chosen_rejected": float(i),
        "sq_norm_chosen": float(i + 1),
        "sq_norm_rejected": float(i + 2),
        "prompt_tokens": 12 + i % 5,
        "chosen_tokens": n_plus,
        "rejected_tokens": n_minus,
        "truncated": i % 9 == 8,
    }


def synthetic_rows(n: int = 40) -> list[dict[str, Any]]:
    """``n`` rows with original and score columns (row_id = i)."""
    rows = []
    for i in range(n):
        row = _original(i)
        scores: dict[str, Any] = {"row_id": i, "pair_id": f"p{i:04d}", "status": "ok", "reason": None}
        status = SPECIAL.get(i)
        if status in ("identical", "truncated_identical"):
            row["rejected"] = row["chosen"]
            scores.update(score_values(i), status=status, reason=f"{status} responses",
                          ches=0.0, ln_ches=0.0, edit_distance=0.0)
        elif status is not None:
            scores.update({c: None for c in SCORE_COLUMNS if c not in ("row_id", "pair_id")},
                          status=status, reason=f"{status}: made up for tests")
        else:
            scores.update(score_values(i))
            if i == NULL_SCORE_ROW:
                scores["ln_ches"] = None
            if i == NAN_SCORE_ROW:
                scores["ln_ches"] = float("nan")
        row.update(scores)
        rows.append(row)
    return rows


def manifest_for(rows: list[dict[str, Any]], *, shards: list[Any], columns: tuple[str, ...],
                 dataset: str = "tests/synthetic") -> dict[str, Any]:
    by_status: dict[str, int] = {}
    for row in rows:
        by_status[row["status"]] = by_status.get(row["status"], 0) + 1
    return {
        "tool": {"name": "ches-filter", "version": "0.1.0"},
        "spec_version": "1",
        "convention": "default",
        "command": f"ches score {dataset} --output out",
        "created_at": "2025-01-01T00:00:00+00:00",
        "model": {
            "id": "smollm2-135m-instruct",
            "revision": None,
            "dtype": "float32",
            "device": "cpu",
            "chat_template": True,
            "tokenizer_fingerprint": "0123456789abcdef",
            "chat_template_fingerprint": "fedcba9876543210",
        },
        "input": {
            "dataset": dataset,
            "split": "train",
            "fingerprint": "feedfacecafebeef",
            "layout": "standard",
            "layout_description": "prompt / chosen / rejected strings",
            "columns": list(columns),
        },
        "options": {"max_length": None, "batch_size": 8},
        "counts": {"read": len(rows), "scored": by_status.get("ok", 0), "by_status": by_status},
        "timing": {"total_s": 1.0},
        "shards": shards,
    }


def make_score_output(
    path: Path,
    rows: list[dict[str, Any]] | None = None,
    *,
    n: int = 40,
    n_shards: int = 2,
    source_schema: pa.Schema = SOURCE_SCHEMA,
    dataset: str = "tests/synthetic",
) -> Path:
    """Write a ``ches score``-style output folder at ``path`` and return it."""
    rows = synthetic_rows(n) if rows is None else rows
    path = Path(path)
    prepare_output_dir(path, overwrite=True)
    per_shard = max(1, math.ceil(len(rows) / n_shards))
    writer = ShardWriter(path, split="train", schema=output_schema(source_schema),
                         rows_per_shard=per_shard)
    writer.write_rows(rows)
    writer.close()
    shards = writer.entries
    manifest = manifest_for(rows, shards=shards, columns=tuple(source_schema.names), dataset=dataset)
    (path / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return path


XSS_SCRIPT = "<script>window.__pwned = 'script'; document.title = 'pwned';</script>"
XSS_IMG = "<img src=x onerror=\"window.__pwned = 'img'; document.title = 'pwned'\">"
MARKDOWN_NASTY = (
    "[bold red]rich markup[/] a | pipe \x1b[31mansi\x1b[0m ``` a fence ```` longer, "
    "[link](http://example.invalid) **bold** <b>html</b> @someone #12\nsecond line"
)


def nasty_rows(n: int = 40) -> list[dict[str, Any]]:
    """``synthetic_rows`` whose top-ranked pairs carry hostile text in every field."""
    rows = synthetic_rows(n)
    rows[28].update(prompt=f"Say hi {XSS_IMG}", rejected=f"Hi! {XSS_SCRIPT} {XSS_IMG}",
                    chosen=f"Hello {XSS_SCRIPT}")
    rows[29].update(prompt=MARKDOWN_NASTY, rejected=MARKDOWN_NASTY, chosen="`code` & <i>x</i>")
    return rows


def tiny_llama(vocab_size: int = 97):
    import torch
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=64)
    return LlamaModel(config).eval()


def char_tokenizer(text: str):
    """A character-level fast tokenizer built in-process (no download)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2}
    for ch in sorted(set(text)):
        vocab.setdefault(ch, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", bos_token="<s>",
                                   eos_token="</s>")


def patch_load_model(monkeypatch: Any, rows: list[dict[str, Any]]) -> None:
    """Make ``load_model`` return a tiny random Llama with a character tokenizer over ``rows``.

    The model is real (one forward pass per response), only small and untrained, so the
    highlighting code path runs end to end offline.
    """
    import torch

    from ches_filter.model import load

    tokenizer = char_tokenizer("".join(r["prompt"] + r["chosen"] + r["rejected"] for r in rows))
    model = tiny_llama(vocab_size=len(tokenizer))

    def fake_load(spec: Any, log: Any = None) -> Any:
        return load.LoadedModel(model=model, tokenizer=tokenizer,
                                resolved=load.ResolvedModel(model_id="tiny", kind="local"),
                                spec=spec, device=torch.device("cpu"), dtype=torch.float32)

    monkeypatch.setattr(load, "load_model", fake_load)
