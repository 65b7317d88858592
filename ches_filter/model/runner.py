"""Batched forward passes: token sequences in, per-pair hidden-state sums out.

No score formula lives here (that is ``scores.py``). The engine has three layouts
(:mod:`.packing`), each tested equal to the one-pair-at-a-time reference:

* ``two_sequences``: ``prompt ⊕ chosen`` and ``prompt ⊕ rejected`` as separate right-padded
  rows with a padding mask. Works with any model; the fallback.
* ``prefix_shared``: one row per pair, ``shared ⊕ chosen ⊕ rejected``, with an explicit mask so
  the rejected tokens see the prompt but not the chosen ones, and position ids that continue
  from the prompt's end: the prompt is computed once instead of twice.
* ``packed``: prefix-shared units packed side by side in rows (first-fit decreasing), so no
  work goes to padding. On a CPU the attention runs per unit (``segments`` executor, see
  :mod:`.attention`); elsewhere through an explicit 4D mask.

With the ``segments`` executor (``auto`` on a CPU), the tokens that every sequence of a window
starts with (a chat template's system prompt and first role header) are computed once per
window, not once per pair: the *window prefix* (:func:`.packing.window_prefix`), whose keys and
values each unit's attention reads before its own. Windows whose common start is shorter than
``min_window_prefix`` tokens (a base model without a system prompt) don't bother.

``mode="auto"`` picks ``packed`` when a quick check on the loaded model (a few small forward
passes, compared with plain ones) shows that it honours custom masks and position ids, and
``two_sequences`` otherwise, saying why through ``log``.

Batches are bounded by a token budget counted with padding (``max_batch_tokens``), longest
first so an out-of-memory shows up at once; on a CUDA out-of-memory the budget is halved and
the batch retried (a single pair that still doesn't fit is retried as two sequences). The base
model only (no lm_head, no ``output_hidden_states``). Sums over each sequence's span are added
up on the device in float32 and only those sums and the final hidden states leave it, as
float64, once per :meth:`HiddenStateRunner.run`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ches_filter.records import PairSums, TokenizedPair

from . import attention as attn
from . import packing
from .load import LoadedModel
from .packing import MODES, RowBatch, Unit

DEFAULT_MAX_BATCH_TOKENS = 8192
MIN_WINDOW_PREFIX = 8  # shorter common starts are left in every unit (one more forward call)
ENGINES = ("auto", *MODES)
ATTENTION_EXECUTORS = ("auto", *attn.EXECUTORS)

# Back-compatible names (the planner used to live here).
plan_batches = packing.plan_batches


@dataclass
class RunnerStats:
    forward_calls: int = 0
    sequences: int = 0  # sequences scored: two per pair
    pair_tokens: int = 0  # tokens of those sequences, as two separate sequences would have them
    real_tokens: int = 0  # tokens the model computed, padding excluded (shared prefixes count once)
    padded_tokens: int = 0  # tokens in the tensors the model saw, padding included
    attended_pairs: int = 0  # (query, key) pairs of real tokens the attention rule allows
    window_prefixes: int = 0  # window prefixes computed once (one forward call each)
    prefix_tokens_saved: int = 0  # tokens units did not compute again thanks to them
    forward_s: float = 0.0  # wall time of the forward passes and reductions (see ``timed``)
    oom_retries: int = 0


@dataclass(frozen=True)
class EngineChoice:
    """The layout and attention executor a runner uses, and why."""

    mode: str
    executor: str | None  # None for two_sequences (a padding mask is all it needs)
    implementation: str  # the model's attention: sdpa, eager, ...
    reason: str
    window_prefix: bool = False  # common starts of windows computed once (segments executor)


def _causal_pairs(n: int, start: int = 0) -> int:
    """Σ_{t=start}^{start+n-1} (t + 1): keys seen by n consecutive causal queries."""
    return n * (2 * start + n + 1) // 2


def attended_pairs(unit: Unit) -> int:
    """Causal (query, key) pairs of a unit, ignoring sliding windows (FLOP accounting only).

    A unit that gave its first ``offset`` tokens to a window prefix still attends to them.
    """
    if unit.plain:
        return _causal_pairs(len(unit))
    shared = unit.shared
    chosen = int((unit.branch == packing.CHOSEN).sum())
    rejected = int((unit.branch == packing.REJECTED).sum())
    return (
        _causal_pairs(shared - unit.offset, unit.offset)
        + _causal_pairs(chosen, shared)
        + _causal_pairs(rejected, shared)
    )


class HiddenStateRunner:
    """Runs the base model over pairs and returns S+, S- and the final hidden states per pair.

    ``mode``: ``auto`` (the fastest layout proven equal on this model), ``two_sequences``,
    ``prefix_shared`` or ``packed``. ``attention``: ``auto``, ``mask`` or ``segments`` (see
    :mod:`.attention`). ``attn_implementation``: run the model with this attention
    implementation (``sdpa``, ``eager``) instead of the one it was loaded with. ``row_tokens``:
    capacity of a packed row (default: the whole budget on CPU, 1024 on GPU).
    ``share_window_prefix``: compute each window's common start once (segments executor only),
    when it is at least ``min_window_prefix`` tokens long. ``query_block``: queries per
    attention call within a unit (segments executor, see :mod:`.attention`). ``timed``:
    synchronise a GPU after every batch so that ``stats.forward_s`` is the forward passes' own
    time (the benchmark); otherwise the host prepares the next batch while the GPU computes.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        mode: str = "auto",
        attention: str = "auto",
        attn_implementation: str | None = None,
        row_tokens: int | None = None,
        share_window_prefix: bool = True,
        min_window_prefix: int = MIN_WINDOW_PREFIX,
        query_block: int = attn.QUERY_BLOCK,
        timed: bool = False,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if max_batch_tokens < 1:
            raise ValueError("max_batch_tokens must be positive")
        if mode not in ENGINES:
            raise ValueError(f"engine mode must be one of {', '.join(ENGINES)}, not {mode!r}")
        if attention not in ATTENTION_EXECUTORS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION_EXECUTORS)}, not {attention!r}")
        self.model = loaded.model
        self.device = loaded.device
        self.dtype = loaded.dtype
        self.hidden_size = int(loaded.model.config.hidden_size)
        pad = loaded.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else 0)  # masked out; any valid id works
        self.max_batch_tokens = max_batch_tokens
        self.log = log
        self.timed = timed
        self.min_window_prefix = max(1, min_window_prefix)
        if query_block < 1:
            raise ValueError("query_block must be positive")
        self.query_block = query_block
        self.stats = RunnerStats()
        self.implementation = attn_implementation or attn.current_implementation(self.model)
        on_gpu = self.device.type == "cuda"
        self.row_tokens = row_tokens or (1024 if on_gpu else None)
        self.engine = self._choose(mode, attention, share_window_prefix)
        # plain sequences on CUDA: the ches attention (key/value heads expanded), see attention.py
        self.plain_via_ches = attn.routes_plain_sequences(self.model, self.device, self.implementation)
        if log and (self.engine.mode != mode or mode == "auto"):
            log(f"engine: {self.describe()}")

    # -- choosing the layout -----------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self.engine.mode

    def describe(self) -> str:
        how = f" via {self.engine.executor} attention" if self.engine.executor else ""
        shared = " + window prefix" if self.engine.window_prefix else ""
        plain = "; plain sequences via the ches attention (key/value heads expanded)" if self.plain_via_ches else ""
        return f"{self.engine.mode}{how}{shared} ({self.engine.implementation}); {self.engine.reason}{plain}"

    def _choose(self, mode: str, attention: str, share_window_prefix: bool) -> EngineChoice:
        implementation = self.implementation
        if mode == "two_sequences":
            return EngineChoice("two_sequences", None, implementation, "asked for")
        wanted = "packed" if mode == "auto" else mode
        if attention == "auto":
            executor = "segments" if wanted == "packed" and self.device.type == "cpu" else "mask"
        else:
            executor = attention
        prefix_note = ""
        if executor == "segments" and share_window_prefix:
            ok, detail = self._check(executor, window_prefix=True)
            if ok:
                return EngineChoice(wanted, executor, implementation, detail, window_prefix=True)
            prefix_note = f"; window prefixes not honoured ({detail})"
        ok, detail = self._check(executor)
        if ok:
            return EngineChoice(wanted, executor, implementation, detail + prefix_note)
        return EngineChoice(
            "two_sequences",
            None,
            implementation,
            f"falling back to two sequences per pair: {wanted} with {executor} attention is not "
            f"honoured by this model ({detail})",
        )

    def _check(self, executor: str, *, window_prefix: bool = False) -> tuple[bool, str]:
        """Do custom masks and position ids give the same hidden states as plain passes here?"""
        checked = f"{executor}+window_prefix" if window_prefix else executor
        known = attn.remembered(self.model, checked, self.implementation)
        if known is not None:
            return known
        if self.implementation not in attn.SUPPORTED_IMPLEMENTATIONS:
            verdict = (False, f"attention implementation {self.implementation!r} is not supported")
        else:
            try:
                verdict = self._probe(executor, window_prefix)
            except attn.LayoutUnsupported as exc:
                verdict = (False, str(exc))
            except Exception as exc:  # a model that rejects the inputs: not honoured
                verdict = (False, f"{type(exc).__name__}: {exc}")
        attn.remember(self.model, checked, self.implementation, verdict)
        return verdict

    def _probe(self, executor: str, window_prefix: bool) -> tuple[bool, str]:
        """Two synthetic pairs packed in one row, against four plain forward passes.

        Both pairs start with the same four tokens; with ``window_prefix`` those are computed
        once, as a window prefix, and the rest of the probe reads them from it.
        """
        import torch

        from ches_filter.records import SequenceSpan

        config = self.model.config
        rng = np.random.default_rng(0)
        vocab = int(getattr(config, "vocab_size", 1000))
        window = getattr(config, "sliding_window", None) or 0
        prompt_len = max(12, min(int(window) + 4, 64))

        lead = tuple(int(x) for x in rng.integers(3, min(vocab, 30000), 4))

        def make(index: int, prompt: int, chosen: int, rejected: int) -> TokenizedPair:
            p = lead + tuple(int(x) for x in rng.integers(3, min(vocab, 30000), prompt - len(lead)))
            c = tuple(int(x) for x in rng.integers(3, min(vocab, 30000), chosen))
            r = tuple(int(x) for x in rng.integers(3, min(vocab, 30000), rejected))
            return TokenizedPair(
                row_id=index,
                prompt_len=prompt,
                chosen=SequenceSpan(p + c, prompt - 1, prompt + chosen - 1),
                rejected=SequenceSpan(p + r, prompt - 1, prompt + rejected - 1),
                chosen_response=c,
                rejected_response=r,
            )

        pairs = [make(0, prompt_len, 7, 11), make(1, prompt_len // 2 + 1, 9, 5)]
        units = packing.units_for(pairs, "packed")
        prefix = None
        if window_prefix:
            length = packing.window_prefix(pairs)
            prefix = self._window_prefix_states(pairs[0].chosen.ids[:length])
            units = [packing.without_prefix(u, length) for u in units]
        batch = packing.build_batch([units], self.pad_id)  # both pairs in one row
        sums = torch.zeros((4, self.hidden_size), dtype=torch.float32, device=self.device)
        lasts = torch.zeros_like(sums)
        self._forward_layout(batch, executor, sums, lasts, prefix)
        worst = 0.0
        with torch.inference_mode(), attn.attention_implementation(self.model, self.implementation):
            for slot, span in enumerate(s for p in pairs for s in (p.chosen, p.rejected)):
                ids = torch.tensor([span.ids], device=self.device)
                hidden = self.model(input_ids=ids, use_cache=False).last_hidden_state[0].float()
                expected = torch.stack([hidden[span.start : span.end].sum(0), hidden[-1]])
                got = torch.stack([sums[slot], lasts[slot]])
                error = float((got - expected).norm() / expected.norm().clamp_min(1e-12))
                worst = max(worst, error)
        limit = 1e-3 if self.dtype == torch.float32 else 5e-2
        if worst > limit:
            return False, f"relative error {worst:.2g} against plain forward passes"
        return True, f"checked equal to plain forward passes (relative error {worst:.1e})"

    # -- running -----------------------------------------------------------------------------
    def run(self, pairs: Sequence[TokenizedPair]) -> list[PairSums]:
        """Sums for each pair, in the order given."""
        import torch

        if not pairs:
            return []
        slots = 2 * len(pairs)
        sums = torch.zeros((slots, self.hidden_size), dtype=torch.float32, device=self.device)
        lasts = torch.zeros_like(sums)
        units = packing.units_for(pairs, self.mode)
        prefix = None
        if self.engine.window_prefix and len(units) > 1:  # one unit has nothing to share it with
            length = packing.window_prefix(pairs)
            if length >= self.min_window_prefix:
                started = time.perf_counter()
                prefix = self._window_prefix_states(pairs[0].chosen.ids[:length])
                if self.timed and self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                self.stats.forward_s += time.perf_counter() - started
                units = [packing.without_prefix(u, length) for u in units]
                self._count_window_prefix(length, len(units))
        pending = self._plan(units)
        while pending:
            rows = pending.pop(0)
            batch = packing.build_batch(rows, self.pad_id)
            try:
                started = time.perf_counter()
                if batch.plain:
                    self._forward_plain(batch, sums, lasts)
                else:
                    self._forward_layout(batch, self.engine.executor or "mask", sums, lasts, prefix)
                if self.timed and self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                self.stats.forward_s += time.perf_counter() - started
            except Exception as exc:
                if not _is_cuda_oom(exc):
                    raise
                pending = self._after_oom(rows, pairs) + pending
                continue
            self._count(batch)
        self.stats.sequences += slots
        self.stats.pair_tokens += sum(p.n_tokens for p in pairs)
        sums64 = sums.to("cpu", torch.float64).numpy()
        lasts64 = lasts.to("cpu", torch.float64).numpy()
        return [
            PairSums(
                row_id=pair.row_id,
                sum_chosen=sums64[2 * k],
                sum_rejected=sums64[2 * k + 1],
                last_chosen=lasts64[2 * k],
                last_rejected=lasts64[2 * k + 1],
            )
            for k, pair in enumerate(pairs)
        ]

    def _plan(self, units: Sequence[Unit]) -> list[list[list[Unit]]]:
        plan = packing.plan(
            units, mode=self.mode, max_batch_tokens=self.max_batch_tokens, row_tokens=self.row_tokens
        )
        return [[[units[i] for i in row] for row in batch] for batch in plan]

    def _count_window_prefix(self, length: int, units: int) -> None:
        self.stats.window_prefixes += 1
        self.stats.prefix_tokens_saved += length * (units - 1)
        self.stats.forward_calls += 1
        self.stats.real_tokens += length
        self.stats.padded_tokens += length
        self.stats.attended_pairs += _causal_pairs(length)

    def _count(self, batch: RowBatch) -> None:
        self.stats.forward_calls += 1
        self.stats.real_tokens += batch.real_tokens
        self.stats.padded_tokens += batch.padded_tokens
        self.stats.attended_pairs += sum(attended_pairs(u) for row in batch.units for u in row)

    def _after_oom(self, rows: list[list[Unit]], pairs: Sequence[TokenizedPair]) -> list[list[list[Unit]]]:
        """Re-plan a failed batch under half the budget; split a lone pair into its sequences."""
        import torch

        torch.cuda.empty_cache()
        units = [u for row in rows for u in row]
        self.stats.oom_retries += 1
        if len(units) > 1:
            self.max_batch_tokens = max(1, self.max_batch_tokens // 2)
            if self.row_tokens:
                self.row_tokens = max(1, min(self.row_tokens, self.max_batch_tokens))
            if self.log:
                self.log(
                    f"CUDA out of memory on a batch of {len(units)} units; halving "
                    f"--max-batch-tokens to {self.max_batch_tokens} and retrying"
                )
            return self._plan(units)
        unit = units[0]
        if unit.plain or self.mode == "two_sequences":
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory on a single sequence of {len(unit)} tokens; "
                "lower --max-length or use a smaller model or dtype"
            )
        index = unit.sums[0][0] // 2
        pair = pairs[index]
        if self.log:
            self.log(f"CUDA out of memory on one pair of {len(unit)} tokens; retrying it as two sequences")
        return [
            [[packing.sequence_unit(pair.chosen, 2 * index)]],
            [[packing.sequence_unit(pair.rejected, 2 * index + 1)]],
        ]

    # -- forward passes ------------------------------------------------------------------------
    def _to_device(self, array: np.ndarray) -> Any:
        import torch

        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def _reduce(self, hidden: Any, batch: RowBatch, sums: Any, lasts: Any) -> None:
        """Add each summed position into its slot (float32, on the device); copy final states."""
        flat = hidden.reshape(-1, hidden.shape[-1])
        tokens = self._to_device(batch.sum_tokens)
        slots = self._to_device(batch.sum_slots)
        sums.index_add_(0, slots, flat.index_select(0, tokens).float())
        last_tokens = self._to_device(batch.last_tokens)
        lasts.index_copy_(0, self._to_device(batch.last_slots), flat.index_select(0, last_tokens).float())

    def _forward_plain(self, batch: RowBatch, sums: Any, lasts: Any) -> None:
        """One causal sequence per row: a 2D padding mask is all the model needs.

        With ``plain_via_ches`` (on CUDA) the rows go through the ``mask`` executor instead: the
        same rule as an explicit mask, under the ``ches`` attention, which expands key/value heads.
        """
        import torch

        if self.plain_via_ches:
            self._forward_layout(batch, "mask", sums, lasts)
            return

        input_ids = self._to_device(batch.ids)
        padding = self._to_device((batch.unit >= 0).astype(np.int64))
        with torch.inference_mode(), attn.attention_implementation(self.model, self.implementation):
            hidden = self.model(input_ids=input_ids, attention_mask=padding, use_cache=False).last_hidden_state
            self._reduce(hidden, batch, sums, lasts)

    def _window_prefix_states(self, ids: Sequence[int]) -> attn.WindowPrefix:
        """One forward pass over a window prefix alone, keeping each layer's keys and values."""
        import torch

        length = len(ids)
        unit = Unit(
            ids=np.asarray(ids, dtype=np.int64),
            positions=np.arange(length, dtype=np.int64),
            branch=np.zeros(length, dtype=np.int8),
            sums=(),
            lasts=(),
            shared=0,
        )
        batch = packing.build_batch([[unit]], self.pad_id)
        prefix = attn.WindowPrefix(length)
        plan = attn.AttentionPlan(
            implementation=self.implementation,
            device=self.device,
            dtype=self.dtype,
            extents=batch.unit_extents(),
            capture=prefix,
            query_block=self.query_block,
        )
        with torch.inference_mode(), attn.attention_implementation(self.model, attn.CHES_ATTENTION):
            self.model(
                input_ids=self._to_device(batch.ids),
                position_ids=self._to_device(batch.positions),
                use_cache=False,
                ches_plan=plan,
            )
        return prefix

    def _forward_layout(
        self, batch: RowBatch, executor: str, sums: Any, lasts: Any, prefix: attn.WindowPrefix | None = None
    ) -> None:
        """Prefix-shared and packed rows: explicit masks and position ids."""
        import torch

        tensors = {
            "unit": self._to_device(batch.unit),
            "positions": self._to_device(batch.positions),
            "branch": self._to_device(batch.branch),
        }
        input_ids = self._to_device(batch.ids)
        plan = attn.AttentionPlan(
            implementation=self.implementation,
            device=self.device,
            dtype=self.dtype,
            prefix=prefix,
            query_block=self.query_block,
        )
        masks = None
        if executor == "segments":
            plan.extents = batch.unit_extents()
        elif prefix is not None:
            raise attn.LayoutUnsupported("window prefixes need the segments executor")
        else:
            masks = attn.model_masks(self.model.config, tensors, self.implementation, self.dtype)
        with torch.inference_mode():
            with attn.attention_implementation(self.model, attn.CHES_ATTENTION):
                hidden = self.model(
                    input_ids=input_ids,
                    position_ids=tensors["positions"],
                    attention_mask=masks,
                    use_cache=False,
                    ches_plan=plan,
                ).last_hidden_state
            self._reduce(hidden, batch, sums, lasts)


def _is_cuda_oom(exc: BaseException) -> bool:
    import torch

    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(exc, oom)) or "CUDA out of memory" in str(exc)
