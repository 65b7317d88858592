"""Batched forward passes: token sequences in, per-pair hidden-state sums out.

No score formula lives here (that is ``scores.py``). Each pair contributes two sequences,
``prompt ⊕ chosen`` and ``prompt ⊕ rejected``. Sequences are sorted longest first and grouped
into batches bounded by a token budget (``max_batch_tokens`` counts padded tokens, so the
tensor that reaches the model never exceeds it); the longest batch runs first, so an
out-of-memory shows up at once. On a CUDA out-of-memory the budget is halved and the batch
retried. Right padding with an explicit attention mask; the base model only (no lm_head, no
``output_hidden_states``). Sums over each sequence's span are taken on the device in float32
and only those sums and the final hidden states leave it, as float64.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ches_filter.records import PairSums, SequenceSpan, TokenizedPair

from .load import LoadedModel

DEFAULT_MAX_BATCH_TOKENS = 8192


@dataclass
class RunnerStats:
    forward_calls: int = 0
    sequences: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0  # tokens in the tensors the model saw, padding included
    oom_retries: int = 0


def plan_batches(lengths: Sequence[int], max_batch_tokens: int) -> list[list[int]]:
    """Group sequence indices, longest first, so that len(batch) * longest <= budget.

    A sequence longer than the budget goes alone in its own batch.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = lengths[current[0]] if current else lengths[index]
        if current and (len(current) + 1) * longest > max_batch_tokens:
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


class HiddenStateRunner:
    def __init__(
        self,
        loaded: LoadedModel,
        *,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if max_batch_tokens < 1:
            raise ValueError("max_batch_tokens must be positive")
        self.model = loaded.model
        self.device = loaded.device
        pad = loaded.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else 0)  # masked out; any valid id works
        self.max_batch_tokens = max_batch_tokens
        self.log = log
        self.stats = RunnerStats()

    def run(self, pairs: Sequence[TokenizedPair]) -> list[PairSums]:
        """Sums for each pair, in the order given."""
        spans: list[SequenceSpan] = []
        for pair in pairs:
            spans.extend((pair.chosen, pair.rejected))
        sums: list[Any] = [None] * len(spans)
        lasts: list[Any] = [None] * len(spans)
        pending = plan_batches([len(s.ids) for s in spans], self.max_batch_tokens)
        while pending:
            batch = pending.pop(0)
            try:
                batch_sums, batch_lasts = self._forward([spans[i] for i in batch])
            except Exception as exc:
                if not _is_cuda_oom(exc) or len(batch) == 1:
                    raise
                self._halve_after_oom(len(batch))
                pending = plan_batches_subset(batch, spans, self.max_batch_tokens) + pending
                continue
            for slot, index in enumerate(batch):
                sums[index] = batch_sums[slot]
                lasts[index] = batch_lasts[slot]
        return [
            PairSums(
                row_id=pair.row_id,
                sum_chosen=sums[2 * k],
                sum_rejected=sums[2 * k + 1],
                last_chosen=lasts[2 * k],
                last_rejected=lasts[2 * k + 1],
            )
            for k, pair in enumerate(pairs)
        ]

    def _halve_after_oom(self, batch_size: int) -> None:
        import torch

        torch.cuda.empty_cache()
        self.max_batch_tokens = max(1, self.max_batch_tokens // 2)
        self.stats.oom_retries += 1
        if self.log:
            self.log(
                f"CUDA out of memory on a batch of {batch_size} sequences; "
                f"halving --max-batch-tokens to {self.max_batch_tokens} and retrying"
            )

    def _forward(self, spans: list[SequenceSpan]) -> tuple[np.ndarray, np.ndarray]:
        import torch

        longest = max(len(s.ids) for s in spans)
        input_ids = torch.full((len(spans), longest), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(spans), longest), dtype=torch.long)
        weights = torch.zeros((len(spans), longest), dtype=torch.float32)
        for row, span in enumerate(spans):
            input_ids[row, : len(span.ids)] = torch.tensor(span.ids, dtype=torch.long)
            attention[row, : len(span.ids)] = 1
            weights[row, span.start : span.end] = 1.0
        last_index = torch.tensor([len(s.ids) - 1 for s in spans], dtype=torch.long)
        non_blocking = self.device.type == "cuda"
        if non_blocking:
            input_ids, attention, weights = (t.pin_memory() for t in (input_ids, attention, weights))
        input_ids = input_ids.to(self.device, non_blocking=non_blocking)
        attention = attention.to(self.device, non_blocking=non_blocking)
        weights = weights.to(self.device, non_blocking=non_blocking)
        with torch.inference_mode():
            hidden = self.model(
                input_ids=input_ids, attention_mask=attention, use_cache=False
            ).last_hidden_state
            hidden32 = hidden.float()
            summed = torch.bmm(weights.unsqueeze(1), hidden32).squeeze(1)  # float32 on device
            last = hidden32[torch.arange(len(spans), device=hidden.device), last_index.to(hidden.device)]
        self.stats.forward_calls += 1
        self.stats.sequences += len(spans)
        self.stats.real_tokens += sum(len(s.ids) for s in spans)
        self.stats.padded_tokens += len(spans) * longest
        return (
            summed.to("cpu", torch.float64).numpy(),
            last.to("cpu", torch.float64).numpy(),
        )


def plan_batches_subset(
    indices: list[int], spans: Sequence[SequenceSpan], max_batch_tokens: int
) -> list[list[int]]:
    """Re-plan the sequences of one failed batch under a smaller budget."""
    plan = plan_batches([len(spans[i].ids) for i in indices], max_batch_tokens)
    return [[indices[j] for j in batch] for batch in plan]


def _is_cuda_oom(exc: BaseException) -> bool:
    import torch

    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(exc, oom)) or "CUDA out of memory" in str(exc)
