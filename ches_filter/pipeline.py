"""``ches score`` as a library: a dataset in, a folder of scored Parquet shards out.

    rows --layouts--> pairs --tokenization--> token ids --model.runner--> sums --scores--> columns

Everything that can be checked without the model (the dataset opens, a layout fits, the options
make sense, the output folder can be written, the model can be found) is checked first, so bad
input costs no model load. Rows are then streamed in windows of ``window`` pairs: each window is
tokenised, sent through batched forward passes, scored and handed to the shard writer, with at
most a few windows in flight, so memory stays bounded whatever the dataset's size. With
``tokenizer_workers`` (the default on a GPU) the next windows are tokenised in worker processes
while the model runs this one (:mod:`.tokenizer_pool`); shards are written on a background
thread (:class:`~ches_filter.data.shards.ShardWriter`). Every input row appears in the output exactly
once, in source order, with a ``status``; rows that can't be scored carry a ``reason`` and null
scores. Identical responses never reach the model.

Use :func:`score_dataset` for a dataset on disk or on the hub, :func:`score_pairs` for a few
pairs in memory (a notebook).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ches_filter.data.layouts import Layout, LayoutOptions, detect_layout
from ches_filter.data.shards import (
    MANIFEST_NAME,
    SCORE_COLUMNS,
    ShardWriter,
    atomic_write_bytes,
    output_schema,
    prepare_output_dir,
)
from ches_filter.data.sources import RowSource, SourceSpec, open_source
from ches_filter.errors import DatasetError, OptionError
from ches_filter.model.host_memory import retain_freed_memory
from ches_filter.model.load import LoadedModel, ModelSpec, load_model, pick_device, resolve_model
from ches_filter.model.runner import DEFAULT_MAX_BATCH_TOKENS, ENGINES, HiddenStateRunner
from ches_filter.records import PairScores, PreferencePair, RowProblem, Status, TokenizedPair
from ches_filter.scores import score_identical, score_pair
from ches_filter.tokenization import (
    PairTokenizer,
    TokenizationOptions,
    chat_template_fingerprint,
    tokenizer_fingerprint,
)
from ches_filter.tokenizer_pool import EncodedWindow, TokenizerPool, auto_workers, encode_all

#: The version of ../shared/spec/ches.md these scores follow (recorded in every manifest).
SPEC_VERSION = "1"
DEFAULT_WINDOW = 256  # pairs read, tokenised and scored together (bounds memory)
WINDOWS_AHEAD = 2  # windows tokenised by worker processes before the model reaches them
DEFAULT_ROWS_PER_SHARD = 10_000
SUMMARY_SCORES = ("ches", "ln_ches", "last_hidden_inner", "edit_distance")
QUANTILES = (0.0, 0.01, 0.25, 0.5, 0.75, 0.99, 1.0)
TOP_PAIRS = 5
EXCERPT_CHARS = 80

Log = Callable[[str], None]


@dataclass(frozen=True)
class Progress:
    """Sent to the ``progress`` callback after every window (and once before the first)."""

    rows_done: int
    rows_total: int | None  # None when the source can't tell cheaply
    tokens_done: int  # tokens that went through the model, padding excluded
    elapsed_s: float


@dataclass
class ScoreResult:
    """What :func:`score_dataset` wrote, and the summary it printed."""

    output: Path
    shards: list[Path]
    manifest: dict[str, Any]
    summary: dict[str, Any]


@dataclass
class _Totals:
    """Running counts and score values for the manifest and the summary table."""

    by_status: Counter[str] = field(default_factory=Counter)
    values: dict[str, list[float]] = field(
        default_factory=lambda: {name: [] for name in SUMMARY_SCORES}
    )
    top: list[tuple[float, int, dict[str, Any]]] = field(default_factory=list)  # min-heap
    rows: int = 0
    truncated: int = 0

    def add(self, scores: PairScores, pair: PreferencePair | None) -> None:
        self.rows += 1
        self.by_status[scores.status.value] += 1
        self.truncated += bool(scores.truncated)
        if scores.status is not Status.OK:
            return
        for name in SUMMARY_SCORES:
            value = getattr(scores, name)
            if value is not None:
                self.values[name].append(value)
        if scores.ln_ches is None or pair is None:
            return
        key = (scores.ln_ches, -scores.row_id)
        if len(self.top) < TOP_PAIRS or key > self.top[0][:2]:
            entry = {
                "row_id": scores.row_id,
                "ln_ches": scores.ln_ches,
                "ches": scores.ches,
                "edit_distance": scores.edit_distance,
                "prompt": excerpt(pair.prompt[-1].content if pair.prompt else pair.prompt_text),
                "chosen": excerpt(pair.chosen),
                "rejected": excerpt(pair.rejected),
            }
            item = (key[0], key[1], entry)
            if len(self.top) < TOP_PAIRS:
                heapq.heappush(self.top, item)
            else:
                heapq.heapreplace(self.top, item)

    def summary(self) -> dict[str, Any]:
        quantiles: dict[str, dict[str, float] | None] = {}
        for name, values in self.values.items():
            if not values:
                quantiles[name] = None
                continue
            array = np.asarray(values, dtype=np.float64)
            points = np.quantile(array, QUANTILES)
            quantiles[name] = {_quantile_name(q): float(v) for q, v in zip(QUANTILES, points, strict=False)}
            quantiles[name]["mean"] = float(array.mean())
        top = [entry for _, _, entry in sorted(self.top, key=lambda item: item[:2], reverse=True)]
        scored = sum(n for status, n in self.by_status.items() if status == Status.OK.value)
        return {
            "rows": self.rows,
            "scored": scored,
            "unscored": self.rows - scored,
            "truncated": self.truncated,
            "by_status": dict(sorted(self.by_status.items(), key=lambda kv: (-kv[1], kv[0]))),
            "quantiles": quantiles,
            "top": top,
        }


def _quantile_name(q: float) -> str:
    return {0.0: "min", 1.0: "max", 0.5: "median"}.get(q, f"p{round(q * 100):02d}")


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """One line of at most ``limit`` characters (whitespace runs collapsed)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def pair_id(pair: PreferencePair | None, row: Mapping[str, Any]) -> str:
    """A content hash of the pair (prompt turns, chosen, rejected), stable across runs and files.

    Two rows with the same normalised content get the same id whatever their layout or position;
    a row that could not be read as a pair is hashed from its raw fields instead.
    """
    if pair is not None:
        payload: Any = {
            "prompt": [[turn.role, turn.content] for turn in pair.prompt],
            "prompt_text": pair.prompt_text,
            "chosen": pair.chosen,
            "rejected": pair.rejected,
        }
    else:
        payload = {"raw": row}
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _score_columns(scores: PairScores, pid: str) -> dict[str, Any]:
    columns = {name: getattr(scores, name, None) for name in SCORE_COLUMNS}
    columns["pair_id"] = pid
    columns["status"] = scores.status.value
    return columns


class PairScorer:
    """Scores windows of pairs with one loaded model: the engine under both entry points."""

    def __init__(
        self,
        loaded: LoadedModel,
        tokenization: TokenizationOptions,
        *,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        engine: str = "auto",
        log: Log | None = None,
    ) -> None:
        self.loaded = loaded
        self.tokenizer = PairTokenizer(loaded.tokenizer, tokenization)
        if loaded.device.type == "cpu":  # large activations: no page faults per layer
            retain_freed_memory()
        self.runner = HiddenStateRunner(loaded, max_batch_tokens=max_batch_tokens, mode=engine, log=log)

    def score(self, items: Sequence[PreferencePair | RowProblem]) -> list[PairScores]:
        """Scores for each item, in the order given (RowProblems pass through as statuses)."""
        return self.score_encoded(encode_all(self.tokenizer, items))

    def score_encoded(self, encoded: Sequence[TokenizedPair | RowProblem]) -> list[PairScores]:
        """Scores for items already tokenised by ``self.tokenizer`` (or a copy of it in a worker)."""
        results: list[PairScores | None] = [None] * len(encoded)
        to_run: list[tuple[int, TokenizedPair]] = []
        for index, item in enumerate(encoded):
            if isinstance(item, RowProblem):
                results[index] = PairScores(row_id=item.row_id, status=item.status, reason=item.reason)
            elif item.truncation_collapsed:
                results[index] = score_identical(
                    item,
                    status=Status.TRUNCATED_IDENTICAL,
                    reason="the responses differ only past --max-length: identical as scored",
                )
            elif item.identical:
                results[index] = score_identical(
                    item, status=Status.IDENTICAL, reason="chosen and rejected are identical"
                )
            else:
                to_run.append((index, item))
        sums = self.runner.run([pair for _, pair in to_run])
        for (index, pair), pair_sums in zip(to_run, sums, strict=True):
            results[index] = score_pair(pair, pair_sums)
        return [r for r in results if r is not None]


@dataclass(frozen=True)
class ScoreOptions:
    """Every ``ches score`` option that changes what is computed (recorded in the manifest)."""

    layout: str | None = None
    prompt_field: str | None = None
    chosen_field: str | None = None
    rejected_field: str | None = None
    label_policy: str = "better"
    use_chat_template: bool = True
    max_length: int | None = None
    convention: str = "default"
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    engine: str = "auto"  # the runner's layout: auto, two_sequences, prefix_shared, packed

    def layout_options(self) -> LayoutOptions:
        return LayoutOptions(
            layout=self.layout,
            prompt_field=self.prompt_field,
            chosen_field=self.chosen_field,
            rejected_field=self.rejected_field,
            label_policy=self.label_policy,
        )

    def tokenization_options(self) -> TokenizationOptions:
        return TokenizationOptions(
            use_chat_template=self.use_chat_template,
            max_length=self.max_length,
            convention=self.convention,  # type: ignore[arg-type]
        )

    def check(self) -> None:
        if self.max_batch_tokens < 1:
            raise OptionError(f"--max-batch-tokens must be at least 1, not {self.max_batch_tokens}")
        if self.engine not in ENGINES:
            raise OptionError(f"--engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        self.tokenization_options()  # raises OptionError on a bad --compat / --max-length


def _model_spec(model: str | ModelSpec | None, **overrides: Any) -> ModelSpec:
    if isinstance(model, ModelSpec):
        if any(v is not None for v in overrides.values()):
            raise OptionError("pass either a ModelSpec or model options, not both")
        return model
    given = {k: v for k, v in overrides.items() if v is not None}
    return ModelSpec(name=model, **given)


def _model_info(loaded: LoadedModel, pair_tokenizer: PairTokenizer) -> dict[str, Any]:
    return {
        "id": loaded.resolved.model_id,
        "kind": loaded.resolved.kind,
        "revision": loaded.spec.revision,
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "device": str(loaded.device),
        "architecture": type(loaded.model).__name__,
        "hidden_size": loaded.hidden_size,
        "chat_template": pair_tokenizer.uses_chat_template,
        "tokenization": pair_tokenizer.description,
        "tokenizer_fingerprint": tokenizer_fingerprint(loaded.tokenizer),
        "chat_template_fingerprint": chat_template_fingerprint(loaded.tokenizer),
    }


def _tool() -> dict[str, str]:
    from ches_filter import __version__

    return {"name": "ches-filter", "version": __version__}


def _windows(
    source: Iterable[tuple[int, dict[str, Any]]], size: int
) -> Iterable[list[tuple[int, dict[str, Any]]]]:
    """``(row_id, row)`` pairs of the source, ``size`` at a time."""
    window: list[tuple[int, dict[str, Any]]] = []
    for item in source:
        window.append(item)
        if len(window) >= size:
            yield window
            window = []
    if window:
        yield window


def score_dataset(
    dataset: str | Path,
    *,
    output: str | Path,
    split: str | None = None,
    config: str | None = None,
    revision: str | None = None,
    limit: int | None = None,
    sample: int | None = None,
    seed: int = 0,
    keep_json_columns: bool = False,
    model: str | ModelSpec | None = None,
    model_revision: str | None = None,
    dtype: str | None = None,
    device: str | None = None,
    trust_remote_code: bool | None = None,
    options: ScoreOptions | None = None,
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
    window: int = DEFAULT_WINDOW,
    tokenizer_workers: int | None = None,
    overwrite: bool = False,
    log: Log | None = None,
    on_detected: Callable[[RowSource, Layout], None] | None = None,
    progress: Callable[[Progress], None] | None = None,
    command: Sequence[str] | None = None,
    **option_values: Any,
) -> ScoreResult:
    """Score every row of ``dataset`` and write shards + ``manifest.json`` under ``output``.

    ``dataset`` is a file, folder, glob or hub id (see docs/formats.md). Score options come as
    ``options=ScoreOptions(...)`` or as keywords (``layout=``, ``max_length=``,
    ``use_chat_template=``, ``convention=``, ``max_batch_tokens=`` …). ``tokenizer_workers``:
    processes tokenising ahead of the model (None: none on a CPU, one per spare core up to 8 on
    an accelerator; the scores do not depend on it). ``keep_json_columns``: store a column that
    no Arrow type holds exactly as the JSON text of each value, instead of failing (see
    docs/formats.md). Raises a ``ChesError`` for bad input before any model is loaded.
    """
    started = time.perf_counter()
    log = log or (lambda message: None)
    if options is None:
        known = {f for f in ScoreOptions.__dataclass_fields__}
        unknown = sorted(set(option_values) - known)
        if unknown:
            raise OptionError(f"unknown score option(s): {', '.join(unknown)}")
        options = ScoreOptions(**{k: v for k, v in option_values.items() if v is not None})
    elif option_values:
        raise OptionError("pass either options=ScoreOptions(...) or option keywords, not both")
    options.check()
    if window < 1:
        raise OptionError(f"window must be at least 1, not {window}")
    if tokenizer_workers is not None and tokenizer_workers < 0:
        raise OptionError(f"--tokenizer-workers must be at least 0, not {tokenizer_workers}")
    if rows_per_shard < 1:  # ShardWriter would say so too, but only after the model loaded
        raise OptionError(f"--rows-per-shard must be at least 1, not {rows_per_shard}")
    spec = _model_spec(
        model, revision=model_revision, dtype=dtype, device=device, trust_remote_code=trust_remote_code
    )

    # -- everything checked before the model loads ------------------------------------------
    source = open_source(
        SourceSpec(str(dataset), split=split, config=config, revision=revision),
        limit=limit,
        sample=sample,
        seed=seed,
        keep_json_columns=keep_json_columns,
    )
    if not source.columns():
        raise DatasetError(f"{source.description} has no rows: nothing to score")
    layout = detect_layout(source.columns(), source.peek(100), options.layout_options())
    schema = output_schema(source.arrow_schema())
    resolve_model(spec)
    pick_device(spec.device)  # a bad or unavailable --device fails before the model loads
    output = Path(output)
    prepare_output_dir(output, overwrite=overwrite)
    if on_detected is not None:
        on_detected(source, layout)

    loaded = load_model(spec, log=log)
    scorer = PairScorer(
        loaded,
        options.tokenization_options(),
        max_batch_tokens=options.max_batch_tokens,
        engine=options.engine,
        log=log,
    )
    load_s = time.perf_counter() - started

    workers = auto_workers(loaded.device.type) if tokenizer_workers is None else tokenizer_workers
    if workers:
        log(f"tokenising in {workers} worker process{'es' if workers > 1 else ''} ahead of the model")
    totals = _Totals()
    rows_total = source.count()
    scoring_started = time.perf_counter()
    if progress is not None:
        progress(Progress(0, rows_total, 0, 0.0))

    def finish(
        window_rows: list[tuple[int, dict[str, Any]]],
        items: list[PreferencePair | RowProblem],
        encoded: EncodedWindow,
    ) -> None:
        scored = scorer.score_encoded(encoded.result())
        out_rows = []
        # Every field of every row is written (the writer checks each fits the schema exactly).
        for (_, row), item, scores in zip(window_rows, items, scored, strict=True):
            pair = item if isinstance(item, PreferencePair) else None
            totals.add(scores, pair)
            out_rows.append({**row, **_score_columns(scores, pair_id(pair, row))})
        writer.write_rows(out_rows)
        if progress is not None:
            progress(
                Progress(
                    totals.rows,
                    rows_total,
                    scorer.runner.stats.real_tokens,
                    time.perf_counter() - scoring_started,
                )
            )

    # Windows are tokenised up to ``ahead`` windows before the model reaches them (by the
    # workers, while the model runs), scored in source order, and written by the writer's thread.
    ahead = WINDOWS_AHEAD if workers else 0
    pending: deque[tuple[list[tuple[int, dict[str, Any]]], list[PreferencePair | RowProblem], EncodedWindow]] = (
        deque()
    )
    with (
        TokenizerPool(scorer.tokenizer, workers) as pool,
        ShardWriter(output, split=source.split, schema=schema, rows_per_shard=rows_per_shard) as writer,
    ):
        for window_rows in _windows(source, window):
            items = [layout.extract(row_id, row) for row_id, row in window_rows]
            pending.append((window_rows, items, pool.submit(items)))
            if len(pending) > ahead:
                finish(*pending.popleft())
        while pending:
            finish(*pending.popleft())
        shards = writer.close()
    scoring_s = time.perf_counter() - scoring_started

    summary = totals.summary()
    stats = scorer.runner.stats
    timing = {
        "load_s": round(load_s, 3),
        "scoring_s": round(scoring_s, 3),
        "total_s": round(time.perf_counter() - started, 3),
        "pairs_per_s": round(totals.rows / scoring_s, 3) if scoring_s > 0 else None,
        "tokens_per_s": round(stats.real_tokens / scoring_s, 1) if scoring_s > 0 else None,
    }
    manifest = {
        "kind": "scores",
        "spec_version": SPEC_VERSION,
        "convention": options.convention,
        "tool": _tool(),
        "command": list(command) if command is not None else list(sys.argv),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": _model_info(loaded, scorer.tokenizer),
        "input": {
            "dataset": str(dataset),
            "description": source.description,
            "split": source.split,
            "config": config,
            "revision": revision,
            "limit": limit,
            "sample": sample,
            "seed": seed if sample is not None else None,
            "fingerprint": source.fingerprint(),
            "layout": layout.name,
            "layout_description": layout.description,
            "columns": source.columns(),
            "json_columns": source.json_columns(),
        },
        "options": {
            "layout": options.layout,
            "prompt_field": options.prompt_field,
            "chosen_field": options.chosen_field,
            "rejected_field": options.rejected_field,
            "label_policy": options.label_policy,
            "use_chat_template": options.use_chat_template,
            "max_length": scorer.tokenizer.max_length,
            "convention": options.convention,
            "max_batch_tokens": options.max_batch_tokens,
            "engine": options.engine,
        },
        "counts": {
            "read": totals.rows,
            "scored": summary["scored"],
            "unscored": summary["unscored"],
            "truncated": summary["truncated"],
            "by_status": summary["by_status"],
        },
        "engine": {
            "mode": scorer.runner.mode,
            "description": scorer.runner.describe(),
            "forward_calls": stats.forward_calls,
            "sequences": stats.sequences,
            "real_tokens": stats.real_tokens,
            "padded_tokens": stats.padded_tokens,
            "pair_tokens": stats.pair_tokens,
            "window_prefixes": stats.window_prefixes,
            "prefix_tokens_saved": stats.prefix_tokens_saved,
            "oom_retries": stats.oom_retries,
            "tokenizer_workers": workers,
        },
        "timing": timing,
        "shards": [str(path.relative_to(output)) for path in shards],
        "schema": {name: str(schema.field(name).type) for name in schema.names},
    }
    atomic_write_bytes(output / MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode())
    summary = {**summary, "output": str(output), "timing": timing, "model": manifest["model"]["id"]}
    return ScoreResult(output=output, shards=shards, manifest=manifest, summary=summary)


def score_pairs(
    pairs: Iterable[Mapping[str, Any]],
    *,
    model: str | ModelSpec | LoadedModel | None = None,
    layout: str | None = None,
    use_chat_template: bool = True,
    max_length: int | None = None,
    convention: str = "default",
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    engine: str = "auto",
    dtype: str | None = None,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """Score pairs held in memory, e.g. ``[{"prompt": ..., "chosen": ..., "rejected": ...}]``.

    Any layout ``ches score`` reads works (detected from the keys, or forced with ``layout=``).
    Returns one dict of score columns per input pair, in order. Pass a ``LoadedModel`` (from
    :func:`ches_filter.load_model`) to score many small batches without reloading.
    """
    rows = [dict(row) for row in pairs]
    if not rows:
        return []
    columns = list(dict.fromkeys(key for row in rows for key in row))
    found = detect_layout(columns, rows[:100], LayoutOptions(layout=layout))
    tokenization = TokenizationOptions(
        use_chat_template=use_chat_template, max_length=max_length, convention=convention  # type: ignore[arg-type]
    )
    if isinstance(model, LoadedModel):
        loaded = model
    else:
        spec = _model_spec(model, dtype=dtype, device=device)
        resolve_model(spec)
        loaded = load_model(spec)
    scorer = PairScorer(loaded, tokenization, max_batch_tokens=max_batch_tokens, engine=engine)
    items = [found.extract(row_id, row) for row_id, row in enumerate(rows)]
    results = scorer.score(items)
    return [
        _score_columns(scores, pair_id(item if isinstance(item, PreferencePair) else None, row))
        for row, item, scores in zip(rows, items, results, strict=True)
    ]
