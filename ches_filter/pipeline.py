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

A run has three parts. :func:`plan_scoring` turns the options into a checked
:class:`ScorePlan` (no model load). :func:`run_scoring` carries it out: each window goes through
separate steps, :func:`extract_window` (layout) → :func:`tokenise_window` →
:func:`score_window` (runner and scores) → :func:`output_rows` → the shard writer, which a resume
or a distributed executor can drive on its own. :func:`summarise_output` then reads the summary
back from the written shards (the score columns only), so no list of every score is kept.

Use :func:`score_dataset` (plan + run) for a dataset on disk or on the hub, :func:`score_pairs`
for a few pairs in memory (a notebook).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ches_filter import score_registry
from ches_filter.data.folders import check_not_input, input_paths
from ches_filter.data.layouts import Layout, LayoutOptions, detect_layout
from ches_filter.data.lock import FolderLock
from ches_filter.data.manifest import ScoreManifest, environment, read_manifest, write_manifest
from ches_filter.data.score_folder import (
    ScoreFolder,
    is_score_output,
    read_scores,
    score_array,
    shard_paths,
)
from ches_filter.data.shards import (
    SCORE_COLUMNS,
    ShardWriter,
    check_output_dir,
    output_schema,
    prepare_output_dir,
)
from ches_filter.data.sources import RowSource, SourceSpec, open_source
from ches_filter.errors import ChesError, DatasetError, OptionError
from ches_filter.model.fingerprint import weights_fingerprint
from ches_filter.model.host_memory import retain_freed_memory
from ches_filter.model.load import (
    LoadedModel,
    ModelSpec,
    ResolvedModel,
    config_context,
    load_model,
    pick_device,
    resolve_model,
)
from ches_filter.model.runner import DEFAULT_MAX_BATCH_TOKENS, ENGINES, HiddenStateRunner
from ches_filter.records import PairScores, PreferencePair, RowProblem, Status, TokenizedPair
from ches_filter.scores import score_identical, score_pair
from ches_filter.selection import rankable_mask, risk_order
from ches_filter.tokenization import (
    PairTokenizer,
    TokenizationOptions,
    chat_template_fingerprint,
    check_max_length,
    tokenizer_fingerprint,
)
from ches_filter.tokenizer_pool import EncodedWindow, TokenizerPool, auto_workers, encode_all

#: The version of ../shared/spec/ches.md these scores follow (recorded in every manifest).
SPEC_VERSION = "1"
DEFAULT_WINDOW = 256  # pairs read, tokenised and scored together (bounds memory)
WINDOWS_AHEAD = 2  # windows tokenised by worker processes before the model reaches them
DEFAULT_ROWS_PER_SHARD = 10_000
SUMMARY_SCORES = score_registry.SUMMARISED
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
    """Running counts while scoring (the progress bar); the summary is read from the shards."""

    rows: int = 0
    by_status: Counter[str] = field(default_factory=Counter)

    def add(self, scores: PairScores) -> None:
        self.rows += 1
        self.by_status[scores.status.value] += 1


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
        # The limit defaults to the model's context; an explicit one above it raises OptionError.
        tokenization = replace(tokenization, context=loaded.max_positions)
        self.tokenizer = PairTokenizer(loaded.tokenizer, tokenization)
        self.tokenizer.prepare_model(loaded.model)  # --compat official's added tokens, if any
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
            elif (degenerate := item.degeneracy()) is not None:  # equal summed states: no model
                results[index] = score_identical(item, status=degenerate.status, reason=degenerate.reason)
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
    ranking_pair: str | None = None  # the ranking layout's pair: first-second (default), first-last
    use_chat_template: bool = True
    max_length: int | None = None  # None: the model's context (max_position_embeddings)
    too_long: str = "truncate"  # a pair past max_length: "truncate" (flagged) or "skip" (too_long)
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
            ranking_pair=self.ranking_pair,
        )

    def tokenization_options(self) -> TokenizationOptions:
        return TokenizationOptions(
            use_chat_template=self.use_chat_template,
            max_length=self.max_length,
            convention=self.convention,  # type: ignore[arg-type]
            too_long=self.too_long,
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
        "context": loaded.max_positions,  # max_position_embeddings; None: the config names none
        "chat_template": pair_tokenizer.uses_chat_template,
        "tokenization": pair_tokenizer.description,
        "tokenizer_fingerprint": tokenizer_fingerprint(loaded.tokenizer),
        "chat_template_fingerprint": chat_template_fingerprint(loaded.tokenizer),
        "weights_fingerprint": weights_fingerprint(loaded.resolved, revision=loaded.spec.revision),
    }


# -- plan: options -> a checked plan, before any model is loaded --------------------------------


@dataclass
class ScorePlan:
    """A scoring run with everything checked that can be checked without the model.

    Made by :func:`plan_scoring`, carried out by :func:`run_scoring`. The source is open and its
    layout detected, the output's schema known, the model found (not loaded), the device
    checked and the output folder checked (it is emptied when the run starts).
    """

    dataset: str
    source: RowSource
    layout: Layout
    options: ScoreOptions
    spec: ModelSpec
    resolved: ResolvedModel
    output: Path
    schema: pa.Schema
    input_options: dict[str, Any]  # split, config, revision, limit, sample, seed
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD
    window: int = DEFAULT_WINDOW
    tokenizer_workers: int | None = None
    overwrite: bool = False
    command: list[str] = field(default_factory=lambda: list(sys.argv))
    started: float = field(default_factory=time.perf_counter)
    _input_fingerprint: str | None = field(default=None, repr=False)

    @property
    def input_fingerprint(self) -> str:
        if self._input_fingerprint is None:
            self._input_fingerprint = self.source.fingerprint()
        return self._input_fingerprint

    def fingerprint(self) -> str:
        """SHA-256 over what decides the scores: the input's content and selection, the score
        options, the model asked for and the spec version (not the weights' bytes: see
        ``model.weights_fingerprint`` in the manifest for those)."""
        payload = {
            "spec_version": SPEC_VERSION,
            "input": self.input_fingerprint,
            "input_options": self.input_options,
            "options": asdict(self.options),
            "model": asdict(self.spec) | {"resolved": self.resolved.model_id},
        }
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def input_info(self) -> dict[str, Any]:
        """The manifest's ``input`` section."""
        sample = self.input_options["sample"]
        return {
            "dataset": self.dataset,
            "description": self.source.description,
            "split": self.source.split,
            "config": self.input_options["config"],
            "revision": self.input_options["revision"],
            "limit": self.input_options["limit"],
            "sample": sample,
            "seed": self.input_options["seed"] if sample is not None else None,
            "fingerprint": self.input_fingerprint,
            "layout": self.layout.name,
            "layout_description": self.layout.description,
            "columns": self.source.columns(),
            "json_columns": self.source.json_columns(),
        }

    def output_holds_these_scores(self) -> bool:
        """The output folder is a finished ``ches score`` output of exactly this plan."""
        if not is_score_output(self.output):
            return False
        try:
            manifest = read_manifest(self.output)
        except ChesError:
            return False
        return isinstance(manifest, ScoreManifest) and manifest.plan_fingerprint == self.fingerprint()


def plan_scoring(
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
    command: Sequence[str] | None = None,
    **option_values: Any,
) -> ScorePlan:
    """Check every option, open the source, detect its layout, find the model and check the
    output folder; load nothing. Raises a ``ChesError`` for bad input (the arguments are
    :func:`score_dataset`'s)."""
    started = time.perf_counter()
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
    resolved = resolve_model(spec)
    # --max-length above the model's context fails here when config.json tells it, else after the load
    if options.max_length is not None:
        check_max_length(options.max_length, config_context(resolved, spec))
    pick_device(spec.device)  # a bad or unavailable --device fails before the model loads
    output = Path(output)
    check_not_input({"--output": output}, input_paths(str(dataset), source))
    check_output_dir(output, overwrite=overwrite)
    return ScorePlan(
        dataset=str(dataset),
        source=source,
        layout=layout,
        options=options,
        spec=spec,
        resolved=resolved,
        output=output,
        schema=schema,
        input_options={"split": split, "config": config, "revision": revision, "limit": limit,
                       "sample": sample, "seed": seed, "keep_json_columns": keep_json_columns},
        rows_per_shard=rows_per_shard,
        window=window,
        tokenizer_workers=tokenizer_workers,
        overwrite=overwrite,
        command=list(command) if command is not None else list(sys.argv),
        started=started,
    )


# -- run: windows through extract -> tokenise -> runner + scorer -> writer ------------------------


@dataclass
class Window:
    """A slice of the source in flight: its rows, what the layout made of them, their tokens."""

    rows: list[tuple[int, dict[str, Any]]]  # (row_id, row) in source order
    items: list[PreferencePair | RowProblem]
    encoded: EncodedWindow | None = None


def read_windows(
    source: Iterable[tuple[int, dict[str, Any]]], size: int
) -> Iterator[list[tuple[int, dict[str, Any]]]]:
    """``(row_id, row)`` pairs of the source, ``size`` at a time."""
    window: list[tuple[int, dict[str, Any]]] = []
    for item in source:
        window.append(item)
        if len(window) >= size:
            yield window
            window = []
    if window:
        yield window


class _UntilSourceFails:
    """The source's ``(row_id, row)`` pairs until it ends or raises a :class:`DatasetError`
    (a malformed row of a streamed dataset, found only when reached): the error is kept in
    ``error`` and the rows before it still flow, so the run can keep what it scored."""

    def __init__(self, source: Iterable[tuple[int, dict[str, Any]]]) -> None:
        self.source = source
        self.error: DatasetError | None = None
        self.first_row: int | None = None
        self.last_row: int | None = None

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any]]]:
        rows = iter(self.source)
        while True:
            try:
                item = next(rows)
            except StopIteration:
                return
            except DatasetError as exc:
                self.error = exc
                return
            if self.first_row is None:
                self.first_row = item[0]
            self.last_row = item[0]
            yield item


def _stopped_error(reading: _UntilSourceFails, rows: int, kept: Sequence[Path], output: Path) -> DatasetError:
    """The source's error, saying what of the run was kept and where."""
    assert reading.error is not None
    if rows and kept:
        files = ", ".join(path.name for path in kept[:3]) + (f" and {len(kept) - 3} more" if len(kept) > 3 else "")
        kept_text = (
            f"scoring stopped there; the {rows:,} rows before it (row_id {reading.first_row} to "
            f"{reading.last_row}, the last row written) were scored and kept in {output / 'data'}: "
            f"{files} (.tmp and no manifest: not a finished output)"
        )
    else:
        kept_text = "scoring stopped there; no row before it was scored"
    hint = reading.error.hint or "fix or skip the bad row (--limit stops before it) and score again"
    return DatasetError(f"{reading.error.message}\n{kept_text}", hint=hint)


def extract_window(layout: Layout, rows: list[tuple[int, dict[str, Any]]]) -> Window:
    """Step 1: each row as a :class:`PreferencePair`, or the :class:`RowProblem` it has."""
    return Window(rows=rows, items=[layout.extract(row_id, row) for row_id, row in rows])


def tokenise_window(window: Window, pool: TokenizerPool) -> Window:
    """Step 2: hand the pairs to the tokeniser pool (worker processes, or inline)."""
    window.encoded = pool.submit(window.items)
    return window


def score_window(scorer: PairScorer, window: Window) -> list[PairScores]:
    """Step 3: forward passes (the runner) and the spec's math (the scorer), in row order."""
    if window.encoded is None:
        return scorer.score(window.items)
    return scorer.score_encoded(window.encoded.result())


def output_rows(window: Window, scores: Sequence[PairScores]) -> list[dict[str, Any]]:
    """Step 4: each row's original fields followed by its score columns, for the writer."""
    out = []
    for (_, row), item, row_scores in zip(window.rows, window.items, scores, strict=True):
        pair = item if isinstance(item, PreferencePair) else None
        out.append({**row, **_score_columns(row_scores, pair_id(pair, row))})
    return out


def run_scoring(
    plan: ScorePlan,
    *,
    log: Log | None = None,
    progress: Callable[[Progress], None] | None = None,
    loaded: LoadedModel | None = None,
) -> ScoreResult:
    """Carry out ``plan``: lock and empty the output folder, load the model (unless ``loaded``
    is given), stream the windows through the steps, then write the manifest and read the
    summary back from the shards. The folder's lock (:class:`~ches_filter.data.lock.FolderLock`)
    is held until the manifest is written, whatever happens."""
    log = log or (lambda message: None)
    with FolderLock.acquire(plan.output, command=" ".join(plan.command), log=log):
        return _run_locked(plan, log=log, progress=progress, loaded=loaded)


def _run_locked(
    plan: ScorePlan,
    *,
    log: Log,
    progress: Callable[[Progress], None] | None,
    loaded: LoadedModel | None,
) -> ScoreResult:
    prepare_output_dir(plan.output, overwrite=plan.overwrite)
    if loaded is None:
        loaded = load_model(plan.spec, log=log)
    options = plan.options
    scorer = PairScorer(
        loaded,
        options.tokenization_options(),
        max_batch_tokens=options.max_batch_tokens,
        engine=options.engine,
        log=log,
    )
    load_s = time.perf_counter() - plan.started
    if scorer.tokenizer.max_length is None:
        log("the model's config gives no context length (max_position_embeddings): pairs are scored "
            "at any length; pass --max-length to set a limit")

    workers = auto_workers(loaded.device.type) if plan.tokenizer_workers is None else plan.tokenizer_workers
    if workers:
        log(f"tokenising in {workers} worker process{'es' if workers > 1 else ''} ahead of the model")
    totals = _Totals()
    rows_total = plan.source.count()
    scoring_started = time.perf_counter()
    if progress is not None:
        progress(Progress(0, rows_total, 0, 0.0))

    def finish(window: Window) -> None:
        scores = score_window(scorer, window)
        for row_scores in scores:
            totals.add(row_scores)
        writer.write_rows(output_rows(window, scores))
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
    pending: deque[Window] = deque()
    with (
        TokenizerPool(scorer.tokenizer, workers) as pool,
        ShardWriter(
            plan.output, split=plan.source.split, schema=plan.schema, rows_per_shard=plan.rows_per_shard
        ) as writer,
    ):
        reading = _UntilSourceFails(plan.source)
        for rows in read_windows(reading, plan.window):
            pending.append(tokenise_window(extract_window(plan.layout, rows), pool))
            if len(pending) > ahead:
                finish(pending.popleft())
        while pending:
            finish(pending.popleft())
        if reading.error is not None:  # the rows read before it are scored: keep them, unfinished
            raise _stopped_error(reading, totals.rows, writer.keep_partial(), plan.output)
        shards = writer.close()
    scoring_s = time.perf_counter() - scoring_started

    summary = summarise_output(plan.output, plan.layout, plan.source.columns())
    stats = scorer.runner.stats
    timing = {
        "load_s": round(load_s, 3),
        "scoring_s": round(scoring_s, 3),
        "total_s": round(time.perf_counter() - plan.started, 3),
        "pairs_per_s": round(totals.rows / scoring_s, 3) if scoring_s > 0 else None,
        "tokens_per_s": round(stats.real_tokens / scoring_s, 1) if scoring_s > 0 else None,
    }
    manifest = ScoreManifest(
        spec_version=SPEC_VERSION,
        convention=options.convention,
        command=plan.command,
        environment=environment(loaded.device),
        model=_model_info(loaded, scorer.tokenizer),
        input=plan.input_info(),
        options={
            "layout": options.layout,
            "prompt_field": options.prompt_field,
            "chosen_field": options.chosen_field,
            "rejected_field": options.rejected_field,
            "label_policy": options.label_policy,
            "ranking_pair": options.ranking_pair,
            "use_chat_template": options.use_chat_template,
            "max_length": scorer.tokenizer.max_length,  # the limit applied (None: none)
            "max_length_from": scorer.tokenizer.max_length_from,
            "too_long": options.too_long,
            "convention": options.convention,
            "max_batch_tokens": options.max_batch_tokens,
            "engine": options.engine,
        },
        counts={
            "read": summary["rows"],
            "scored": summary["scored"],
            "unscored": summary["unscored"],
            "truncated": summary["truncated"],
            "by_status": summary["by_status"],
        },
        engine={
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
        timing=timing,
        shards=writer.entries,
        schema={name: str(plan.schema.field(name).type) for name in plan.schema.names},
        plan_fingerprint=plan.fingerprint(),
    )
    write_manifest(plan.output, manifest)
    summary = {**summary, "output": str(plan.output), "timing": timing, "model": manifest.model["id"]}
    return ScoreResult(output=plan.output, shards=shards, manifest=manifest.to_dict(), summary=summary)


def existing_result(plan: ScorePlan) -> ScoreResult:
    """The result of an earlier run of ``plan`` (see :meth:`ScorePlan.output_holds_these_scores`)."""
    folder = ScoreFolder.open(plan.output)
    summary = summarise_output(plan.output, plan.layout, folder.original_columns)
    model = (folder.manifest.get("model") or {}).get("id")
    summary = {**summary, "output": str(plan.output), "timing": folder.manifest.get("timing") or {},
               "model": model}
    return ScoreResult(output=plan.output, shards=list(folder.shards), manifest=folder.manifest,
                       summary=summary)


# -- summary: read back from the written shards ---------------------------------------------------


def summarise_output(
    output: Path,
    layout: Layout | None = None,
    original_columns: Sequence[str] = (),
    *,
    top: int = TOP_PAIRS,
) -> dict[str, Any]:
    """Counts by status, quantiles of the summarised scores over ``ok`` rows and the ``top``
    riskiest pairs by the default score, from the shards of ``output``: only the score columns
    are read, then the ``original_columns`` of the ``top`` rows, which ``layout`` turns back
    into pairs for their excerpts (no ``layout``: no top pairs)."""
    names = list(dict.fromkeys(["row_id", "status", "truncated", *SUMMARY_SCORES, score_registry.DEFAULT_BY]))
    table = read_scores(output, columns=names)
    status = np.asarray(table.column("status").to_pylist(), dtype=object)
    ok = status == Status.OK.value
    counts = Counter(status.tolist())
    truncated = table.column("truncated").to_numpy(zero_copy_only=False)
    quantiles: dict[str, dict[str, float] | None] = {}
    for name in SUMMARY_SCORES:
        present = ok & table.column(name).is_valid().to_numpy(zero_copy_only=False)
        values = score_array(table, name)[present]
        if values.size == 0:
            quantiles[name] = None
            continue
        points = np.quantile(values, QUANTILES)
        quantiles[name] = {_quantile_name(q): float(v) for q, v in zip(QUANTILES, points, strict=True)}
        quantiles[name]["mean"] = float(values.mean())
    scored = int(ok.sum())
    return {
        "rows": int(table.num_rows),
        "scored": scored,
        "unscored": int(table.num_rows) - scored,
        "truncated": int(np.sum(truncated == True)),  # noqa: E712 (object array with None)
        "by_status": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        "quantiles": quantiles,
        "top": _top_pairs(output, table, layout, list(original_columns), top) if layout else [],
    }


def _top_pairs(
    output: Path, table: pa.Table, layout: Layout, original_columns: list[str], top: int
) -> list[dict[str, Any]]:
    by = score_registry.DEFAULT_BY
    row_id = table.column("row_id").to_numpy()
    status = np.asarray(table.column("status").to_pylist(), dtype=object)
    score = score_array(table, by)
    ranked = np.flatnonzero(rankable_mask(status, score))
    order = ranked[risk_order(row_id[ranked], score[ranked], lower_is_riskier=score_registry.lower_is_riskier(by))]
    chosen = order[:top]
    if chosen.size == 0:
        return []
    ids = [int(row_id[i]) for i in chosen]
    rows: dict[int, dict[str, Any]] = {}
    wanted = [*original_columns, "row_id", *score_registry.TOP_TABLE]
    for shard in shard_paths(output):
        found = pq.read_table(shard, columns=list(dict.fromkeys(wanted)), filters=[("row_id", "in", ids)])
        for row in found.to_pylist():
            rows[int(row["row_id"])] = row
    entries = []
    for rid in ids:
        row = rows[rid]
        item = layout.extract(rid, {name: row[name] for name in original_columns})
        pair = item if isinstance(item, PreferencePair) else None
        entry: dict[str, Any] = {"row_id": rid, **{name: row[name] for name in score_registry.TOP_TABLE}}
        if pair is not None:
            entry |= {
                "prompt": excerpt(pair.prompt[-1].content if pair.prompt else pair.prompt_text),
                "chosen": excerpt(pair.chosen),
                "rejected": excerpt(pair.rejected),
            }
        entries.append(entry)
    return entries


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
    docs/formats.md). Raises a ``ChesError`` for bad input before any model is loaded. The same
    as ``run_scoring(plan_scoring(...))``.
    """
    plan = plan_scoring(
        dataset, output=output, split=split, config=config, revision=revision, limit=limit,
        sample=sample, seed=seed, keep_json_columns=keep_json_columns, model=model,
        model_revision=model_revision, dtype=dtype,
        device=device, trust_remote_code=trust_remote_code, options=options,
        rows_per_shard=rows_per_shard, window=window, tokenizer_workers=tokenizer_workers,
        overwrite=overwrite, command=command, **option_values,
    )
    if on_detected is not None:
        on_detected(plan.source, plan.layout)
    return run_scoring(plan, log=log, progress=progress)


def score_pairs(
    pairs: Iterable[Mapping[str, Any]],
    *,
    model: str | ModelSpec | LoadedModel | None = None,
    layout: str | None = None,
    use_chat_template: bool = True,
    max_length: int | None = None,
    too_long: str = "truncate",
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
        use_chat_template=use_chat_template, max_length=max_length, convention=convention,  # type: ignore[arg-type]
        too_long=too_long,
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
