"""Benchmark: the reference algorithm against ``ches score``'s engine, one optimisation at a time.

On the same pairs, model and machine, in one run:

(a)  the reference algorithm as the official per-example script does it: one pair at a time,
     two forward passes of the causal LM with ``output_hidden_states=True`` and full logits,
     float32, sums of the last layer's hidden states taken afterwards;
(b0) the same, one pair at a time, but the base model only (no lm_head, no hidden states of
     every layer): the "skip work" step;
(b1) batched, two sequences per pair, token-budget batches (``--engine two_sequences``);
(b2) + prefix sharing: one row per pair, the prompt computed once (``prefix_shared``);
(b3) + padding-free packing, several pairs per row (``packed``; on a CPU the attention runs per
     pair, the ``segments`` executor), every pair computing its whole prompt;
(b4) + window prefix: the tokens every sequence of a window starts with (the chat template's
     system prompt and user header) computed once per window: what ``--engine auto`` runs on a CPU;
(b3') packed rows with one explicit 4D mask per row instead (the executor ``auto`` picks on GPUs).

Every engine row is checked equal to (a) (ln_ches within 1e-4 of the scale of its terms), so a
fast row is never a wrong one. Each engine configuration runs ``--repeats`` times, interleaved
with the others, and its fastest run is kept (other processes share the machine); the speedup is
also given round by round (each run over the reference's run of the same round), which a drift of
the machine's speed over the run moves less than a ratio of two fastest runs does. The matmul
throughput of the machine is measured at the start of the run and after each round; the highest
figure is the one the forward passes are compared with. glibc's malloc is set to keep freed
memory, as ``ches score`` does on a CPU, for every step, (a) included (``--allocator default``
leaves it alone for every step).

FLOPs counted: 2 x (weights of every linear layer of the base model) per token computed, plus
4 x heads x head_dim x layers per (query, key) pair the attention actually allows; (a) also
counts its lm_head (2 x vocabulary x hidden per token). Padding is not counted: it is waste.

    .venv/bin/python scripts/bench.py                        # CPU defaults, a few minutes
    .venv/bin/python scripts/bench.py --rank 400             # + bf16 vs fp32 ranking
    python scripts/bench.py --device cuda --pairs 2000 --max-batch-tokens 65536 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"

ENGINE_STEPS = [
    ("b1", "batched, two sequences", {"mode": "two_sequences"}),
    ("b2", "+ prefix sharing", {"mode": "prefix_shared", "attention": "mask"}),
    ("b3", "+ packing (segments)", {"mode": "packed", "attention": "segments", "share_window_prefix": False}),
    ("b4", "+ window prefix", {"mode": "packed", "attention": "segments"}),
    ("b3'", "+ packing (4D mask)", {"mode": "packed", "attention": "mask"}),
]


@dataclass
class Result:
    key: str
    name: str
    pairs: int
    seconds: float
    forward_s: float
    pair_tokens: int
    computed_tokens: int
    padded_tokens: int
    flops: float
    forward_calls: int
    max_error: float | None = None
    runs: list[float] = field(default_factory=list)


# -- data ------------------------------------------------------------------------------------


def load_pairs(args: argparse.Namespace, tokenizer: Any) -> tuple[list[Any], float]:
    """``--pairs`` HH-RLHF rows that tokenise to a non-identical pair, and the time tokenising
    them took (per pair, for the overlap discussion): the first ones, or with ``--sample spread``
    rows evenly spaced over the file (then the rows after them, should some not tokenise)."""
    from ches_filter.data.layouts import LayoutOptions, detect_layout
    from ches_filter.records import PreferencePair, TokenizedPair
    from ches_filter.tokenization import PairTokenizer, TokenizationOptions

    if args.tokens:
        return read_tokens(Path(args.tokens))[: args.pairs], float("nan")
    with gzip.open(args.data, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    layout = detect_layout(list(rows[0]), rows[:100], LayoutOptions())
    pair_tokenizer = PairTokenizer(tokenizer, TokenizationOptions(max_length=args.max_length))
    encoded: list[TokenizedPair] = []
    order = list(range(len(rows)))
    if args.sample == "spread":
        step = max(1, len(rows) // max(args.pairs, 1))
        picked = order[::step]
        order = picked + sorted(set(order) - set(picked))
    started = time.perf_counter()
    for row_id in order:
        row = rows[row_id]
        item = layout.extract(row_id, row)
        if not isinstance(item, PreferencePair):
            continue
        pair = pair_tokenizer.encode(item)
        if isinstance(pair, TokenizedPair) and not pair.identical and not pair.truncation_collapsed:
            encoded.append(pair)
        if len(encoded) == args.pairs:
            break
    return encoded, (time.perf_counter() - started) / max(len(encoded), 1)


def write_tokens(path: Path, pairs: list[Any]) -> None:
    payload = [
        {
            "row_id": p.row_id, "prompt_len": p.prompt_len,
            "chosen": [list(p.chosen.ids), p.chosen.start, p.chosen.end],
            "rejected": [list(p.rejected.ids), p.rejected.start, p.rejected.end],
        }
        for p in pairs
    ]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as handle:
        json.dump(payload, handle)


def read_tokens(path: Path) -> list[Any]:
    from ches_filter.records import SequenceSpan, TokenizedPair

    with gzip.open(path, "rt") as handle:
        payload = json.load(handle)
    pairs = []
    for p in payload:
        chosen, rejected = SequenceSpan(tuple(p["chosen"][0]), *p["chosen"][1:]), SequenceSpan(
            tuple(p["rejected"][0]), *p["rejected"][1:]
        )
        pairs.append(
            TokenizedPair(
                p["row_id"], p["prompt_len"], chosen, rejected,
                chosen.ids[p["prompt_len"]:], rejected.ids[p["prompt_len"]:],
            )
        )  # fmt: skip
    return pairs


# -- models ----------------------------------------------------------------------------------


def load(args: argparse.Namespace, dtype: str) -> Any:
    """The base model as ``ches score`` loads it (or, with --random-init, one of the same shape)."""
    from ches_filter.model.load import LoadedModel, ModelSpec, load_model, pick_device, pick_dtype

    if not args.random_init:
        return load_model(ModelSpec(name=args.model, dtype=dtype, device=args.device))
    import torch
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(args.model)
    device = pick_device(args.device)
    torch_dtype = pick_dtype(dtype, device)
    torch.manual_seed(0)
    model = AutoModel.from_config(config, dtype=torch_dtype).to(device).eval()
    tokenizer = type("Tokenizer", (), {"pad_token_id": config.pad_token_id or 0})()
    return LoadedModel(model, tokenizer, None, ModelSpec(name=args.model), device, torch_dtype)  # type: ignore[arg-type]


def causal_lm(loaded: Any, args: argparse.Namespace) -> Any:
    """The causal LM (lm_head included) the official script runs: base weights + tied head."""
    import torch
    from transformers import AutoModelForCausalLM

    config = loaded.model.config
    lm = AutoModelForCausalLM.from_config(config, dtype=loaded.dtype)
    lm.model.load_state_dict(loaded.model.state_dict())
    if not getattr(config, "tie_word_embeddings", False):
        torch.manual_seed(1)  # an untied head: its values do not matter for the timing
    lm.tie_weights()
    return lm.to(loaded.device).eval()


def linear_weights(model: Any) -> int:
    import torch

    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def attention_flops_per_pair(config: Any) -> float:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 4.0 * heads * head_dim * config.num_hidden_layers


# -- measurements ----------------------------------------------------------------------------


def matmul_gflops(dtype_name: str, device: Any, size: int = 2048, seconds: float = 1.5) -> float:
    """Best GFLOP/s of ``size``-square products through ``F.linear`` (the path nn.Linear takes:
    on CPUs without native bf16 a plain ``a @ b`` in bf16 is 15x slower than this)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    linear = torch.nn.functional.linear
    best = 0.0
    linear(a, b)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == 0.0:
        started = time.perf_counter()
        linear(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * size**3 / (time.perf_counter() - started) / 1e9)
    return best


def reference_run(lm: Any, pairs: list[Any], *, base_only: bool) -> tuple[float, list[Any], float]:
    """One pair at a time, two forward passes; (a) with lm_head and every layer's states."""
    import torch

    from ches_filter.records import PairSums

    device = next(lm.parameters()).device
    sums: list[Any] = []
    forward_s = 0.0
    started = time.perf_counter()
    with torch.inference_mode():
        for pair in pairs:
            result = []
            for span in (pair.chosen, pair.rejected):
                ids = torch.tensor([span.ids], device=device)
                t0 = time.perf_counter()
                if base_only:
                    hidden = lm(input_ids=ids, use_cache=False).last_hidden_state[0]
                else:
                    out = lm(input_ids=ids, output_hidden_states=True, use_cache=False)
                    hidden = out.hidden_states[-1][0]  # out.logits: the full logits, computed
                total = hidden[span.start : span.end].float().sum(0).double().cpu().numpy()
                last = hidden[-1].double().cpu().numpy()
                forward_s += time.perf_counter() - t0
                result.append((total, last))
            (sc, lc), (sr, lr) = result
            sums.append(PairSums(pair.row_id, sc, sr, lc, lr))
    return time.perf_counter() - started, sums, forward_s


def engine_run(
    loaded: Any, pairs: list[Any], settings: dict[str, Any], budget: int, window: int, row_tokens: int | None = None
):
    from ches_filter.model.runner import HiddenStateRunner

    runner = HiddenStateRunner(loaded, max_batch_tokens=budget, row_tokens=row_tokens, timed=True, **settings)
    out = []
    started = time.perf_counter()
    for start in range(0, len(pairs), window):
        out.extend(runner.run(pairs[start : start + window]))
    return time.perf_counter() - started, out, runner


def round_speedups(reference: Result, step: Result) -> list[float]:
    """pairs/s of each of ``step``'s runs over (a)'s run of the same round (the runs interleave)."""
    return [
        (step.pairs / seconds) / (reference.pairs / ref_seconds)
        for seconds, ref_seconds in zip(step.runs, reference.runs, strict=False)
    ]


def max_error(pairs: list[Any], sums: list[Any], reference: list[Any]) -> float:
    """Largest |ln_ches - ln_ches_ref| over the scale of its terms (the tests' tolerance: 1e-4)."""
    from ches_filter.scores import score_pair

    worst = 0.0
    for pair, got, want in zip(pairs, sums, reference, strict=True):
        a, b = score_pair(pair, got), score_pair(pair, want)
        n, m = b.chosen_tokens, b.rejected_tokens
        scale = max(abs(b.dot_chosen_rejected) / (n * m), b.sq_norm_chosen / (n * n), 1e-30)
        worst = max(worst, abs(a.ln_ches - b.ln_ches) / scale)
    return worst


# -- the run ---------------------------------------------------------------------------------


def describe_machine(device: Any) -> dict[str, Any]:
    import torch
    import transformers

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="HH-RLHF jsonl(.gz) file")
    parser.add_argument("--tokens", help="pre-tokenised pairs (from --save-tokens) instead of --data")
    parser.add_argument("--save-tokens", help="write the tokenised pairs here (for a machine without the tokenizer)")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="bundled alias, folder, .gguf or hub id")
    parser.add_argument("--random-init", action="store_true",
                        help="a randomly initialised model from --model's config (timing only; "
                        "for machines that can't hold the weights)")  # fmt: skip
    parser.add_argument("--pairs", type=int, default=64, help="pairs for the engine runs")
    parser.add_argument("--sample", choices=("first", "spread"), default="first",
                        help="first: the file's first pairs; spread: pairs evenly spaced over the file")  # fmt: skip
    parser.add_argument("--reference-pairs", type=int, default=None,
                        help="pairs for (a) and (b0) (default: --pairs); pairs/s is compared")  # fmt: skip
    parser.add_argument("--max-length", type=int, default=None, help="--max-length as for ches score")
    parser.add_argument("--max-batch-tokens", type=int, default=8192)
    parser.add_argument("--window", type=int, default=256, help="pairs per runner call (as the pipeline)")
    parser.add_argument("--row-tokens", type=int, default=None,
                        help="capacity of a packed row (default: the runner's: the budget on CPU, 1024 on GPU)")  # fmt: skip
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="dtype of the engine runs (a) is float32")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each step, interleaved (fastest kept)")
    parser.add_argument("--steps", default=None,
                        help="comma-separated steps to run (default: a,b0,b1,b2,b3,b4 on a CPU, and b3', "
                        "the executor `auto` picks on a GPU, on CUDA)")  # fmt: skip
    parser.add_argument("--rank", type=int, default=0, metavar="N",
                        help="also score N pairs in float32 and bfloat16 and compare the rankings")  # fmt: skip
    parser.add_argument("--allocator", choices=("retain", "default"), default="retain",
                        help="retain: glibc keeps freed memory, as `ches score` sets it on a CPU, for every "
                        "step, (a) included; default: leave malloc alone, for every step")  # fmt: skip
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args(argv)

    import torch

    from ches_filter.model.host_memory import retain_freed_memory

    allocator = "retains freed memory" if args.allocator == "retain" and retain_freed_memory() else "default"

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32
        torch.backends.cudnn.allow_tf32 = False
    if args.steps is None:
        args.steps = "a,b0,b1,b2,b3,b4,b3'" if args.device.startswith("cuda") else "a,b0,b1,b2,b3,b4"
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731

    loaded = load(args, args.dtype)
    device = loaded.device
    machine = describe_machine(device)
    say(f"machine: {machine}")
    pairs, tokenise_s = load_pairs(args, loaded.tokenizer)
    if args.save_tokens:
        write_tokens(Path(args.save_tokens), pairs)
    n_ref = min(args.reference_pairs or len(pairs), len(pairs))
    config = loaded.model.config
    weights = linear_weights(loaded.model)
    attn_flops = attention_flops_per_pair(config)
    lm_head = 2.0 * config.vocab_size * config.hidden_size
    prompt = np.mean([p.prompt_len for p in pairs])
    response = np.mean([(len(p.chosen_response) + len(p.rejected_response)) / 2 for p in pairs])
    say(f"{len(pairs)} pairs: prompt {prompt:.0f} tokens and responses {response:.0f} tokens on average")

    matmul: dict[str, list[float]] = {"float32": [], "bfloat16": []}

    def measure_matmul() -> None:
        for name in matmul:
            matmul[name].append(matmul_gflops(name, device, seconds=1.0))
        say(f"matmul GFLOP/s: fp32 {matmul['float32'][-1]:.0f}, bf16 {matmul['bfloat16'][-1]:.0f}")

    measure_matmul()
    results: dict[str, Result] = {}
    reference_sums: list[Any] | None = None
    ref_pairs = pairs[:n_ref]
    lm = None
    if "a" in steps or "b0" in steps:
        fp32 = loaded if loaded.dtype == torch.float32 else load(args, "float32")
        lm = causal_lm(fp32, args)

    def keep(key: str, result: Result, seconds: float) -> None:
        previous = results.get(key)
        runs = (previous.runs if previous else []) + [seconds]
        if previous is None or seconds < previous.seconds:
            results[key] = result
        results[key].runs = runs

    for _round in range(args.repeats):
        for key, base_only in (("a", False), ("b0", True)):
            if key not in steps or lm is None:
                continue
            model = lm.model if base_only else lm
            seconds, sums, forward_s = reference_run(model, ref_pairs, base_only=base_only)
            tokens = sum(p.n_tokens for p in ref_pairs)
            attended = sum(n * (n + 1) // 2 for p in ref_pairs for n in (len(p.chosen.ids), len(p.rejected.ids)))
            flops = 2.0 * weights * tokens + attn_flops * attended + (0 if base_only else lm_head * tokens)
            name = "reference algorithm" if key == "a" else "one pair at a time, base model only"
            result = Result(key, name, len(ref_pairs), seconds, forward_s, tokens, tokens, tokens, flops,
                            2 * len(ref_pairs))  # fmt: skip
            if key == "a" and reference_sums is None:
                reference_sums = sums
            elif reference_sums is not None:
                result.max_error = max_error(ref_pairs, sums, reference_sums)
            keep(key, result, seconds)
            say(f"{key}: {len(ref_pairs) / seconds:.2f} pairs/s")
        for key, name, settings in [s for s in ENGINE_STEPS if s[0] in steps]:
            seconds, sums, runner = engine_run(
                loaded, pairs, settings, args.max_batch_tokens, args.window, args.row_tokens
            )
            stats = runner.stats
            flops = 2.0 * weights * stats.real_tokens + attn_flops * stats.attended_pairs
            result = Result(key, f"{name}: {runner.describe().split(';')[0]}", len(pairs), seconds,
                            stats.forward_s, stats.pair_tokens, stats.real_tokens, stats.padded_tokens,
                            flops, stats.forward_calls)  # fmt: skip
            if reference_sums is not None:
                result.max_error = max_error(ref_pairs, sums[:n_ref], reference_sums)
            keep(key, result, seconds)
            say(f"{key}: {len(pairs) / seconds:.2f} pairs/s ({runner.describe()})")
        measure_matmul()
    del lm

    peak32, peak16 = max(matmul["float32"]), max(matmul["bfloat16"])

    lines = [
        f"machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} "
        f"({machine['torch_threads']} threads), transformers {machine['transformers']}, device {machine['device']}"
        + (f" ({machine['gpu']})" if "gpu" in machine else "")
        + f"; malloc: {allocator}",
        f"model: {args.model}{' (random weights, same shape)' if args.random_init else ''}, "
        f"engine dtype {str(loaded.dtype).removeprefix('torch.')}, --max-batch-tokens {args.max_batch_tokens}",
        f"data: {len(pairs)} HH-RLHF pairs{' spread over the file' if args.sample == 'spread' else ''}"
        + (f" ({n_ref} for a/b0)" if {"a", "b0"} & set(steps) else "")
        + f", prompt {prompt:.0f} + responses {response:.0f} tokens on average; "
        + (f"tokenising took {tokenise_s * 1e3:.1f} ms per pair" if tokenise_s == tokenise_s else "tokenised elsewhere"),
        f"matmul 2048x2048 (F.linear): fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s, the best "
        f"of {len(matmul['float32'])} measurements spread over the run (fp32: "
        f"{', '.join(f'{v:.0f}' for v in matmul['float32'])})",
        f"each step ran {args.repeats} times, interleaved with the others; its fastest run is shown",
        "",
        "| step | pairs/s | tokens/s | speedup vs (a) | round by round | forward GFLOP/s | of matmul peak | computed / padded tokens | max ln_ches error |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base_rate = results["a"].pairs / results["a"].seconds if "a" in results else None
    table = []
    for key in ["a", "b0"] + [s[0] for s in ENGINE_STEPS]:
        if key not in results:
            continue
        r = results[key]
        rate = r.pairs / r.seconds
        gflops = r.flops / r.forward_s / 1e9
        peak = peak32 if key in ("a", "b0") or loaded.dtype == torch.float32 else peak16
        speedup = f"{rate / base_rate:.2f}x" if base_rate else "—"
        paired = round_speedups(results["a"], r) if "a" in results and key != "a" else []
        by_round = (
            f"{np.median(paired):.2f}x ({min(paired):.2f}–{max(paired):.2f})" if len(paired) > 1 else "—"
        )
        error = "—" if r.max_error is None else f"{r.max_error:.1e}"
        lines.append(
            f"| ({key}) {r.name} | {rate:.2f} | {r.pair_tokens / r.seconds:.0f} | {speedup} | {by_round} | "
            f"{gflops:.0f} | {gflops / peak:.0%} | {r.computed_tokens:,} / {r.padded_tokens:,} | {error} |"
        )
        table.append({**r.__dict__, "pairs_per_s": rate, "gflops": gflops, "of_matmul_peak": gflops / peak,
                      "round_speedups": paired})  # fmt: skip
    lines.append("")
    lines.append("speedup vs (a): fastest run over fastest run; round by round: each round's run over (a)'s run of")
    lines.append("the same round (the runs of a round are minutes apart), the median and the range over the rounds;")
    lines.append("tokens/s: tokens of the two sequences of each pair, as (a) sees them, per second of wall time;")
    lines.append("forward GFLOP/s: FLOPs computed on real tokens per second spent in forward passes and sums;")
    lines.append("of matmul peak: that over the matmul GFLOP/s above in the step's dtype ((a), (b0): float32).")

    rank_report = None
    if args.rank:
        rank_report = rank_comparison(args, pairs, say)
        lines.append("")
        lines.extend(rank_report["lines"])
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": machine, "allocator": allocator, "args": vars(args), "matmul": matmul, "results": table,
            "rank": rank_report,
        }, indent=2, default=str))  # fmt: skip
    return 0


def rank_comparison(args: argparse.Namespace, pairs: list[Any], say: Any) -> dict[str, Any]:
    """Score the first N pairs in float32 and in bfloat16 with the default engine; compare."""
    from compare_rankings import compare, table

    from ches_filter.scores import score_pair

    n = args.rank
    if len(pairs) < n:
        more = argparse.Namespace(**{**vars(args), "pairs": n})
        pairs, _ = load_pairs(more, load(args, "float32").tokenizer)
    pairs = pairs[:n]
    scores: dict[str, dict[str, np.ndarray]] = {}
    timing = {}
    for dtype in ("float32", "bfloat16"):
        loaded = load(args, dtype)
        seconds, sums, _runner = engine_run(loaded, pairs, {}, args.max_batch_tokens, args.window)
        timing[dtype] = len(pairs) / seconds
        scored = [score_pair(p, s) for p, s in zip(pairs, sums, strict=True)]
        scores[dtype] = {
            name: np.array([getattr(s, name) for s in scored]) for name in ("ln_ches", "ches")
        }
        say(f"rank: {dtype} {timing[dtype]:.2f} pairs/s")
    lines = [
        f"bf16 vs fp32 ranking on {len(pairs)} HH-RLHF pairs ({args.device}; fp32 {timing['float32']:.2f} "
        f"pairs/s, bf16 {timing['bfloat16']:.2f} pairs/s):",
        "",
    ]
    found = {name: compare(scores["float32"][name], scores["bfloat16"][name]) for name in ("ln_ches", "ches")}
    lines.extend(table(found))
    report: dict[str, Any] = {"pairs": len(pairs), "pairs_per_s": timing, **found}
    report["lines"] = lines
    return report


if __name__ == "__main__":
    raise SystemExit(main())
