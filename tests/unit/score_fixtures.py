"""Build synthetic ``ches score`` output folders, exactly as the contract describes them.

``OUT/data/train-0000k-of-0000n.parquet`` with the original columns (unchanged, in their original
order) followed by ``SCORE_SCHEMA``'s columns, and ``OUT/manifest.json``. The scores are made up
but consistent (identical pairs have ches = ln_ches = edit_distance = 0; other non-ok statuses
have null scores), and include ties, a null and a NaN score on ``ok`` rows.

Also the one comparison every equivalence test uses (``assert_scores_close``: a fast path's
scores against ``ches_filter.reference`` at a bound float32 justifies), the tiny in-process
models, and the path of the HH-style dialogue fixture (``HH_FIXTURE``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
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


# -- comparing a fast path's scores with reference.py, at a tolerance float32 justifies ----------
#
# Every fast path (batched, prefix-shared, packed, on CPU or CUDA) runs the model in float32 and
# sums the hidden states in float32; the reference runs one unpadded sequence per forward pass
# and sums in float64. What may differ, per pair (u = 2^-24, float32's unit roundoff):
#
# 1. Each hidden state h_t: the same float32 function, computed with other shapes (padding,
#    packing, masks, blocks of queries), reduces in another order. ||δh_t|| <= κ·u·||h_t||, where
#    κ grows with the model's depth; it is measured, not derived (KAPPA below).
# 2. The float32 sum of n states (``index_add_``, one state after another): per coordinate
#    |fl(Σ h_t)_i - Σ h_t,i| <= (n-1)·u·Σ_t |h_t,i| (the bound for recursive summation, Higham,
#    Accuracy and Stability of Numerical Algorithms, §4.2), so in norm <= (n-1)·u·||A||, where
#    A = Σ_t |h_t| coordinate-wise.
#    So ||δS|| <= e := u·(κ·M + (n-1)·||A||), M = Σ_t ||h_t||, for S+ and S- apart (e+, e-).
# 3. Everything after the sums (inner products of d numbers in float64, both sides) adds at most
#    d·2^-53·||a||·||b||: below the float32 terms by 2^29/d, so it is left out.
#
# Propagated exactly (D = S- - S+, the δ's of any sign):
#   ches = <S+, D>:   δ = <δS+, D> + <S+, δS- - δS+> + <δS+, δS- - δS+>
#                     |δ| <= e+·||D|| + ||S+||·(e+ + e-) + e+·(e+ + e-)
# The first term is relative to the score itself (|ches| <= ||S+||·||D||, Cauchy-Schwarz), the
# second is the floor that the sizes of the subtracted terms set: when chosen and rejected are
# close, ||D|| << ||S+|| and the floor dominates. It is ~(κ+n)·u·M/||S|| of ||S+||², where the
# old test allowed 1e-4·||S+||² (1,700 u), ~15% of ches on the demo pair.
#   ln_ches:          the same with S/n, D/n-terms and e/n
#   <S+, S->:         e+·||S-|| + ||S+||·e- + e+·e-
#   ||S±||²:          2·||S±||·e± + e±²
#   <h+_last, h-_last>: as <S+, S-> with e = κ·u·||h_last|| (one state, nothing summed)
#
# KAPPA, measured: over every equivalence test (CPU, float32; ``CHES_PRINT_RATIOS=1 pytest -s
# tests/equivalence`` prints each pair that needs more), the largest κ any pair needs is 25
# (Gemma-3-270M's final hidden state, packed vs reference; SmolLM2-135M needs < 5, the tiny
# models < 2). 64 leaves 2.5x for other kernels (CUDA, other CPUs); at 64 the real
# discrepancies use at most 39% of the bound (last_hidden_inner) and 7% for ches and ln_ches.
# On the bundled demo pairs the ches bound is 2% of ches for the first pair (the old rule: 15%)
# and 10% for the second (old: 80%); test_tolerance.py checks that wrong sums fail it.
U32 = 2.0**-24
KAPPA = 64
HH_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "dialogues" / "hh_style.jsonl"

#: the columns compared by value, and the integer/exact ones compared by equality
CLOSE_COLUMNS = ("ches", "ln_ches", "dot_chosen_rejected", "sq_norm_chosen", "sq_norm_rejected",
                 "last_hidden_inner")  # fmt: skip
EXACT_COLUMNS = ("edit_distance", "prompt_tokens", "chosen_tokens", "rejected_tokens", "truncated")


@dataclass(frozen=True)
class StateMagnitudes:
    """What the error bound of one pair needs, from the reference's hidden states (float64)."""

    n_chosen: int
    n_rejected: int
    norm_chosen: float  # ||S+||
    norm_rejected: float  # ||S-||
    norm_diff: float  # ||S- - S+||
    norm_mean_diff: float  # ||S-/n- - S+/n+||
    mass_chosen: float  # M+ = Σ_t ||h+_t|| over the summed positions
    mass_rejected: float
    abs_sum_chosen: float  # ||A+||, A+ = Σ_t |h+_t| coordinate-wise
    abs_sum_rejected: float
    norm_last_chosen: float  # ||h+_last||
    norm_last_rejected: float


def state_magnitudes(model: Any, pair: Any) -> StateMagnitudes:
    """Magnitudes of ``pair``'s states under ``model``, from ``reference.hidden_states``."""
    import numpy as np

    from ches_filter.reference import hidden_states

    chosen = np.asarray(hidden_states(model, pair.chosen.ids), dtype=np.float64)
    rejected = np.asarray(hidden_states(model, pair.rejected.ids), dtype=np.float64)
    summed_plus = chosen[pair.chosen.start : pair.chosen.end]
    summed_minus = rejected[pair.rejected.start : pair.rejected.end]
    s_plus, s_minus = summed_plus.sum(0), summed_minus.sum(0)
    norm = np.linalg.norm
    return StateMagnitudes(
        n_chosen=len(summed_plus),
        n_rejected=len(summed_minus),
        norm_chosen=float(norm(s_plus)),
        norm_rejected=float(norm(s_minus)),
        norm_diff=float(norm(s_minus - s_plus)),
        norm_mean_diff=float(norm(s_minus / len(summed_minus) - s_plus / len(summed_plus))),
        mass_chosen=float(norm(summed_plus, axis=1).sum()),
        mass_rejected=float(norm(summed_minus, axis=1).sum()),
        abs_sum_chosen=float(norm(np.abs(summed_plus).sum(0))),
        abs_sum_rejected=float(norm(np.abs(summed_minus).sum(0))),
        norm_last_chosen=float(norm(chosen[-1])),
        norm_last_rejected=float(norm(rejected[-1])),
    )


def float32_tolerances(m: StateMagnitudes, kappa: float = KAPPA) -> dict[str, float]:
    """The bound above, per column, for one pair."""
    e_plus = U32 * (kappa * m.mass_chosen + (m.n_chosen - 1) * m.abs_sum_chosen)
    e_minus = U32 * (kappa * m.mass_rejected + (m.n_rejected - 1) * m.abs_sum_rejected)
    n_p, n_m = m.n_chosen, m.n_rejected
    # ln_ches = <S+/n+, S-/n- - S+/n+>: its D and its errors in units of the means
    ln_e_plus, ln_e_minus = e_plus / n_p, e_minus / n_m
    ln_diff = m.norm_mean_diff
    l_plus, l_minus = kappa * U32 * m.norm_last_chosen, kappa * U32 * m.norm_last_rejected
    return {
        "ches": e_plus * m.norm_diff + m.norm_chosen * (e_plus + e_minus) + e_plus * (e_plus + e_minus),
        "ln_ches": ln_e_plus * ln_diff + (m.norm_chosen / n_p) * (ln_e_plus + ln_e_minus)
        + ln_e_plus * (ln_e_plus + ln_e_minus),
        "dot_chosen_rejected": e_plus * m.norm_rejected + m.norm_chosen * e_minus + e_plus * e_minus,
        "sq_norm_chosen": 2 * m.norm_chosen * e_plus + e_plus**2,
        "sq_norm_rejected": 2 * m.norm_rejected * e_minus + e_minus**2,
        "last_hidden_inner": l_plus * m.norm_last_rejected + m.norm_last_chosen * l_minus + l_plus * l_minus,
    }  # fmt: skip


def score_ratios(got: Any, want: Any, m: StateMagnitudes, kappa: float = KAPPA) -> dict[str, float]:
    """|got - want| / tolerance per compared column: <= 1 passes."""
    tolerance = float32_tolerances(m, kappa)
    ratios = {}
    for name in CLOSE_COLUMNS:
        error = abs(getattr(got, name) - getattr(want, name))
        ratios[name] = error / tolerance[name] if tolerance[name] else (0.0 if error == 0 else math.inf)
    return ratios


def kappa_needed(got: Any, want: Any, m: StateMagnitudes) -> float:
    """The smallest κ at which ``got`` passes (0 when the summation term alone covers it)."""
    low, high = 0.0, 2.0**30
    if max(score_ratios(got, want, m, kappa=0).values()) <= 1:
        return 0.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (low, mid) if max(score_ratios(got, want, m, kappa=mid).values()) <= 1 else (mid, high)
    return high


_largest: dict[str, float] = {}


def assert_scores_close(got: Any, want: Any, m: StateMagnitudes, where: str = "") -> None:
    """``got`` (a fast path's PairScores) equals ``want`` (the reference's) within the bound.

    With ``CHES_PRINT_RATIOS=1`` (and ``pytest -s``) it prints each pair that sets a new largest
    share of the bound used by a column, or a new largest κ needed.
    """
    where = where or f"row {want.row_id}"
    for name in EXACT_COLUMNS:
        assert getattr(got, name) == getattr(want, name), (where, name)
    ratios = score_ratios(got, want, m)
    if os.environ.get("CHES_PRINT_RATIOS"):
        kappa = kappa_needed(got, want, m)
        news = [name for name, ratio in ratios.items() if ratio > _largest.get(name, -1.0)]
        if news or kappa > _largest.get("kappa", -1.0):
            _largest.update({name: ratios[name] for name in news})
            _largest["kappa"] = max(kappa, _largest.get("kappa", -1.0))
            shares = ", ".join(f"{name} {ratio:.2g}" for name, ratio in ratios.items())
            print(f"\n{where} (n+ {m.n_chosen}, n- {m.n_rejected}): share of the bound used: {shares}; "
                  f"κ needed {kappa:.3g}")  # fmt: skip
    for name, ratio in ratios.items():
        assert ratio <= 1.0, (
            f"{where}: {name} {getattr(got, name)!r} vs reference {getattr(want, name)!r}: "
            f"{ratio:.3g}x the float32 bound"
        )
