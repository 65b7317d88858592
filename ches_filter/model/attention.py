"""How the layouts of :mod:`.packing` reach a transformers model's attention.

Two executors, both checked against plain forward passes (:func:`layout_honoured`):

* ``mask``: an explicit 4D mask ``[rows, 1, length, length]`` built from the attention rule of
  :func:`.packing.attention_allowed`, handed to the model's own attention implementation
  (boolean for SDPA, additive float for eager). transformers uses a 4D mask as it is, so a model
  with sliding-window layers (``config.layer_types``) gets a dict ``{layer type: mask}`` with the
  window applied. Without an explicit mask, transformers would infer sequence boundaries from
  position ids, and the rejected branch, whose positions continue from the prompt, would attend
  to the chosen one.
* ``segments``: variable-length attention. The model runs with a registered attention function
  (``ches_segments``) that calls the underlying implementation (SDPA or eager) once per unit on
  that unit's slice of queries, keys and values, with the unit's own small mask (or none, for a
  plain causal sequence under SDPA). No work goes to padding or to pairs of tokens from
  different units, which is what makes packing several pairs into one row pay on a CPU.
  With a :class:`WindowPrefix`, each unit's keys and values are those of the window prefix
  (captured per layer by a forward pass over the prefix alone, the plan's ``capture``)
  followed by its own, and its mask has the prefix's columns first: the tokens that every
  sequence of a window starts with are computed once per window instead of once per pair.
  A unit longer than ``QUERY_BLOCK`` tokens is attended in blocks of that many queries, each
  over the keys it may see (:meth:`AttentionPlan.blocks`): SDPA's CPU kernel computes every
  (query, key) score of a call, masked or not (``is_causal`` included), so one call per unit
  spends half its work above the causal diagonal and on the chosen tokens the rejected ones
  don't see; blocks of queries skip most of it (docs/performance.md).

Both executors run the model under the registered ``ches`` attention function, which calls the
underlying implementation. On CUDA it first expands grouped key/value heads into contiguous
tensors: transformers' ``repeat_kv`` returns a zero-stride view when a model has one key/value
head (Gemma-3-270M), and with torch 2.11 (cu130, H100) SDPA given such a view and a mask
returned a wrong state (position 64 of a 65-token sequence, tiny Gemma-3 with a sliding
window; contiguous copies of the same tensors gave the right one).

Plain causal sequences (the ``two_sequences`` engine, the fallback to it, the out-of-memory
retry of a single pair as two sequences, and the report's per-token highlighting) would run the
model's own attention, hence that ``repeat_kv`` path. On CUDA they run under the ``ches``
attention too, with an explicit 4D mask of the same rule (:func:`routes_plain_sequences`,
:func:`sequence_inputs`); elsewhere, or for a model whose attention pattern such a mask can't
express (:func:`layer_windows` raises), they keep the model's own attention.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .packing import SHARED, attention_allowed

CHES_ATTENTION = "ches"
QUERY_BLOCK = 64  # queries per attention call within a unit (segments executor)
EXECUTORS = ("mask", "segments")
SUPPORTED_IMPLEMENTATIONS = ("sdpa", "eager")


class LayoutUnsupported(Exception):
    """The model's attention can't be given this layout (the runner falls back to two sequences)."""


def layer_windows(config: Any) -> dict[str, int | None] | None:
    """``{layer type: sliding window}`` for models with ``layer_types``, None when one mask fits all.

    Raises LayoutUnsupported for attention patterns a 4D mask built here would not reproduce.
    """
    if getattr(config, "use_bidirectional_attention", False):
        raise LayoutUnsupported("the model uses bidirectional attention")
    types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if not types:
        if window is not None and getattr(config, "use_sliding_window", True):
            raise LayoutUnsupported("sliding-window attention without per-layer types")
        return None
    windows: dict[str, int | None] = {}
    for kind in set(types):
        if kind == "full_attention":
            windows[kind] = None
        elif kind == "sliding_attention" and window is not None:
            windows[kind] = int(window)
        else:
            raise LayoutUnsupported(f"layer type {kind!r}")
    return windows


def allowed_mask(unit: Any, positions: Any, branch: Any, window: int | None) -> Any:
    """Boolean ``[rows, 1, length, length]`` mask of the attention rule, on the tensors' device."""
    q_pos, k_pos = positions[:, :, None], positions[:, None, :]
    k_branch = branch[:, None, :]
    allowed = (unit[:, :, None] == unit[:, None, :]) & (k_pos <= q_pos)
    allowed &= (k_branch == SHARED) | (k_branch == branch[:, :, None])
    if window is not None:
        allowed &= q_pos - k_pos < window
    return allowed[:, None, :, :]


def _for_implementation(mask: Any, implementation: str, dtype: Any) -> Any:
    import torch

    if implementation == "eager":
        return torch.where(mask, torch.zeros((), dtype=dtype, device=mask.device), torch.finfo(dtype).min)
    return mask


def model_masks(config: Any, tensors: dict[str, Any], implementation: str, dtype: Any) -> Any:
    """The ``attention_mask`` argument for the ``mask`` executor: a 4D mask or a dict of them."""
    if implementation not in SUPPORTED_IMPLEMENTATIONS:
        raise LayoutUnsupported(f"attention implementation {implementation!r}")
    windows = layer_windows(config)
    args = (tensors["unit"], tensors["positions"], tensors["branch"])
    if windows is None:
        return _for_implementation(allowed_mask(*args, None), implementation, dtype)
    built: dict[int | None, Any] = {}
    for window in set(windows.values()):
        built[window] = _for_implementation(allowed_mask(*args, window), implementation, dtype)
    return {kind: built[window] for kind, window in windows.items()}


def routes_plain_sequences(model: Any, device: Any, implementation: str) -> bool:
    """Whether plain causal sequences run under the ``ches`` attention (module docstring).

    True on CUDA, for the implementations the ``ches`` attention wraps, when an explicit mask can
    express the model's attention pattern.
    """
    if getattr(device, "type", device) != "cuda" or implementation not in SUPPORTED_IMPLEMENTATIONS:
        return False
    try:
        layer_windows(model.config)
    except LayoutUnsupported:
        return False
    return True


def sequence_inputs(model: Any, input_ids: Any, implementation: str, dtype: Any) -> dict[str, Any]:
    """Forward keyword arguments that run unpadded causal rows ``input_ids`` under ``ches``.

    Each row is one sequence from position 0: the explicit mask of :func:`model_masks` (causal,
    sliding windows per layer type), position ids, and the plan the ``ches`` attention reads.
    Use inside ``attention_implementation(model, CHES_ATTENTION)``.
    """
    import torch

    rows, length = input_ids.shape
    device = input_ids.device
    tensors = {
        "unit": torch.zeros((rows, length), dtype=torch.long, device=device),
        "positions": torch.arange(length, device=device).expand(rows, length),
        "branch": torch.full((rows, length), SHARED, dtype=torch.int8, device=device),
    }
    return {
        "attention_mask": model_masks(model.config, tensors, implementation, dtype),
        "position_ids": tensors["positions"],
        "ches_plan": AttentionPlan(implementation=implementation, device=device, dtype=dtype),
    }


def layer_index(module: Any) -> int:
    """The attention layer's index, which keys a window prefix's per-layer states."""
    index = getattr(module, "layer_idx", None)
    if index is None:
        raise LayoutUnsupported("the attention layers don't say their index (layer_idx)")
    return int(index)


@dataclass
class WindowPrefix:
    """Keys and values of a window prefix, per layer: ``[1, key/value heads, length, head_dim]``.

    Filled by a forward pass over the prefix alone (``AttentionPlan.capture``), then read by
    every unit of the window whose ``offset`` is ``length``.
    """

    length: int
    states: dict[int, tuple[Any, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class QueryBlock:
    """One attention call within a unit: some of its queries, the keys they may see, a mask.

    ``queries`` index the unit's own tokens; ``keys`` index its keys, the window prefix's
    first. ``mask`` is additive over those rows and columns, or None for a plain causal
    sequence under SDPA (its ``is_causal``).
    """

    queries: slice
    keys: slice
    mask: Any


@dataclass
class AttentionPlan:
    """What the ``ches`` attention function needs for one forward pass.

    ``extents`` (segments executor): where each unit sits in the batch; None (mask executor):
    use the mask the model hands to each layer, which is the explicit one the runner passed.
    """

    implementation: str  # the attention that does the work: "sdpa" or "eager"
    device: Any
    dtype: Any
    extents: list[tuple[int, int, int, Any]] | None = None  # (row, start, end, packing.Unit)
    prefix: WindowPrefix | None = None  # keys and values every unit attends to before its own
    capture: WindowPrefix | None = None  # this pass computes a window prefix: keep its states
    query_block: int = QUERY_BLOCK
    _blocks: dict[tuple[int, int | None], list[QueryBlock]] = field(default_factory=dict)

    def blocks(self, index: int, window: int | None) -> list[QueryBlock]:
        """A unit's attention calls for this layer's window, built once per forward pass.

        One call for a unit of up to ``query_block`` tokens; otherwise one per block of that
        many queries, over the span of keys any of them may see (from the first to the last
        allowed column), with the unit's mask cut to those rows and columns.
        """
        key = (index, window)
        if key not in self._blocks:
            assert self.extents is not None
            _, start, end, unit = self.extents[index]
            n = end - start
            needs_window = window is not None and n > window
            if n <= self.query_block and unit.plain and not needs_window and self.implementation == "sdpa":
                self._blocks[key] = [QueryBlock(slice(0, n), slice(0, n), None)]
            else:
                allowed = attention_allowed(unit.positions, unit.branch, window, prefix=unit.offset)
                self._blocks[key] = [
                    self._block(allowed, first, min(n, first + self.query_block))
                    for first in range(0, n, self.query_block)
                ]
        return self._blocks[key]

    def _block(self, allowed: Any, first: int, end: int) -> QueryBlock:
        """Queries ``first..end-1`` of a unit whose attention rule is ``allowed`` ([q, k])."""
        import torch

        rows = allowed[first:end]
        seen = rows.any(axis=0)  # every query sees itself, so never empty
        lo = int(seen.argmax())
        hi = int(seen.shape[0] - seen[::-1].argmax())
        mask = torch.zeros((end - first, hi - lo), dtype=self.dtype)
        mask.masked_fill_(~torch.from_numpy(rows[:, lo:hi].copy()), torch.finfo(self.dtype).min)
        return QueryBlock(slice(first, end), slice(lo, hi), mask[None, None].to(self.device))


class _HeadsExpanded:
    """An attention module as the inner function sees it once key/value heads are expanded."""

    num_key_value_groups = 1

    def __init__(self, module: Any) -> None:
        self._module = module

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def _eager_of(module: Any) -> Any:
    found = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if found is None:
        from transformers.models.llama.modeling_llama import eager_attention_forward as found
    return found


def ches_attention(
    module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any
) -> tuple[Any, None]:
    """The runner's attention: the underlying implementation, per unit or with the given mask.

    Registered as ``ches``; the runner passes ``ches_plan=AttentionPlan(...)`` through the
    model's forward keyword arguments, which transformers hands to every attention layer.
    """
    import torch
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    plan: AttentionPlan | None = kwargs.pop("ches_plan", None)
    if plan is None:
        raise LayoutUnsupported("ches attention was called without a plan")
    if plan.implementation == "eager":
        inner = _eager_of(module)
    else:
        inner = ALL_ATTENTION_FUNCTIONS[plan.implementation]
        groups = getattr(module, "num_key_value_groups", 1)
        if query.device.type == "cuda" and groups > 1:  # see the module docstring
            key = key.repeat_interleave(groups, dim=1)
            value = value.repeat_interleave(groups, dim=1)
            module = _HeadsExpanded(module)
    if plan.capture is not None:
        plan.capture.states[layer_index(module)] = (key, value)
    if plan.extents is None:
        output, _ = inner(module, query, key, value, attention_mask, **kwargs)
        return output, None
    prefix = plan.prefix.states[layer_index(module)] if plan.prefix is not None else None
    window = kwargs.get("sliding_window", getattr(module, "sliding_window", None))
    rows, heads, length, head_dim = query.shape
    output = query.new_zeros((rows, length, heads, head_dim))
    for index, (row, start, end, unit) in enumerate(plan.extents):
        unit_key = key[row : row + 1, :, start:end]
        unit_value = value[row : row + 1, :, start:end]
        if unit.offset:
            if prefix is None or prefix[0].shape[2] != unit.offset:
                raise LayoutUnsupported(f"a unit needs a window prefix of {unit.offset} tokens")
            unit_key = torch.cat([prefix[0], unit_key], dim=2)
            unit_value = torch.cat([prefix[1], unit_value], dim=2)
        blocks = plan.blocks(index, window)
        caller = module
        groups = getattr(module, "num_key_value_groups", 1)
        if len(blocks) > 1 and groups > 1:  # expand key/value heads once, not once per block
            unit_key = unit_key.repeat_interleave(groups, dim=1)
            unit_value = unit_value.repeat_interleave(groups, dim=1)
            caller = _HeadsExpanded(module)
        for block in blocks:
            queries = slice(start + block.queries.start, start + block.queries.stop)
            piece, _ = inner(
                caller,
                query[row : row + 1, :, queries],
                unit_key[:, :, block.keys],
                unit_value[:, :, block.keys],
                block.mask,
                **kwargs,
            )
            output[row, queries] = piece[0]
    return output, None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(CHES_ATTENTION, ches_attention)


@contextmanager
def attention_implementation(model: Any, name: str | None) -> Iterator[None]:
    """Run the model with another attention implementation for the duration of the block."""
    config = model.config
    previous = config._attn_implementation
    if name is None or name == previous:
        yield
        return
    if name == CHES_ATTENTION:
        _register()
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = previous


def current_implementation(model: Any) -> str:
    return str(model.config._attn_implementation or "eager")


# Which (executor, implementation) pairs were checked on which model: a model stays loaded
# for a whole run, and the check costs a few small forward passes.
_checked: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], tuple[bool, str]]] = (
    weakref.WeakKeyDictionary()
)


def remembered(model: Any, executor: str, implementation: str) -> tuple[bool, str] | None:
    return _checked.get(model, {}).get((executor, implementation))


def remember(model: Any, executor: str, implementation: str, verdict: tuple[bool, str]) -> None:
    _checked.setdefault(model, {})[(executor, implementation)] = verdict
