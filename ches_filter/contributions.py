"""Per-token decomposition of CHES over the rejected response, for the report's highlighting.

With ``S+ = Σ_{t in chosen span} h+_t`` and the rejected span ``[start, end)`` holding n- positions,

    ches = <S+, S-> - ||S+||² = Σ_{t in rejected span} ( <h-_t, S+> - ||S+||² / n- )

so rejected position t contributes ``<h-_t, S+> - ||S+||²/n-``: its similarity to the chosen
response, minus an equal share of the chosen response's squared norm. Position t predicts
token ``ids[t + 1]`` (the hidden state at t is what the unembedding reads to produce it), so the
contribution is attributed to that token. Likewise ln_ches decomposes as

    ln_ches = Σ_t ( <h-_t, S+/n+> - ||S+/n+||² ) / n-.

Both decompositions are exact: the contributions sum to the score up to float64 rounding.
This costs one forward pass per response, so the report recomputes it for the top N only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .records import SequenceSpan, TokenizedPair

END_TOKEN_TEXT = "⟨end⟩"


@dataclass(frozen=True)
class TokenContribution:
    """One rejected-response position: the token it predicts and its share of each score."""

    position: int
    token_id: int | None  # None when the position predicts past the end of the sequence
    text: str
    ches: float
    ln_ches: float


@dataclass(frozen=True)
class PairContributions:
    row_id: int
    tokens: tuple[TokenContribution, ...]
    ches: float  # Σ of the token contributions == the recomputed ches
    ln_ches: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "row_id": self.row_id,
            "ches": self.ches,
            "ln_ches": self.ln_ches,
            "tokens": [
                {
                    "position": t.position,
                    "token_id": t.token_id,
                    "text": t.text,
                    "ches": t.ches,
                    "ln_ches": t.ln_ches,
                }
                for t in self.tokens
            ],
        }


def hidden_states(model: Any, ids: tuple[int, ...] | list[int], *, via_ches: bool | None = None) -> np.ndarray:
    """Last-layer hidden states of one sequence, shape ``[len(ids), d]``, in float64.

    ``model`` is a transformers base model (``last_hidden_state``); a causal-LM wrapper also
    works (its ``hidden_states[-1]`` is used). On CUDA the pass runs under the project's ``ches``
    attention with an explicit causal mask (key/value heads expanded, see
    :mod:`ches_filter.model.attention`), as the scoring engine does; ``via_ches`` forces the
    choice (None: decide by the device).
    """
    import torch

    from .model import attention as attn

    parameter = next(model.parameters())
    implementation = attn.current_implementation(model)
    if via_ches is None:
        via_ches = attn.routes_plain_sequences(model, parameter.device, implementation)
    input_ids = torch.tensor([list(ids)], dtype=torch.long, device=parameter.device)
    if via_ches:
        kwargs = attn.sequence_inputs(model, input_ids, implementation, parameter.dtype)
        name: str | None = attn.CHES_ATTENTION
    else:
        kwargs = {"attention_mask": torch.ones_like(input_ids)}
        name = None
    with torch.no_grad(), attn.attention_implementation(model, name):
        out = model(input_ids=input_ids, use_cache=False, **kwargs)
        states = getattr(out, "last_hidden_state", None)
        if states is None:
            out = model(input_ids=input_ids, use_cache=False, output_hidden_states=True, **kwargs)
            states = out.hidden_states[-1]
    return states[0].to(torch.float64).cpu().numpy()


def decompose(
    h_chosen: np.ndarray, chosen: SequenceSpan, h_rejected: np.ndarray, rejected: SequenceSpan
) -> tuple[np.ndarray, np.ndarray]:
    """Per-rejected-position contributions to (ches, ln_ches); each array has n- entries."""
    s_plus = np.asarray(h_chosen, dtype=np.float64)[chosen.start : chosen.end].sum(axis=0)
    h_minus = np.asarray(h_rejected, dtype=np.float64)[rejected.start : rejected.end]
    n_plus, n_minus = chosen.n_summed, rejected.n_summed
    if n_plus < 1 or n_minus < 1:
        raise ValueError("both spans must hold at least one position")
    inner = h_minus @ s_plus
    sq_norm = float(s_plus @ s_plus)
    ches_part = inner - sq_norm / n_minus
    ln_part = (inner / n_plus - sq_norm / n_plus**2) / n_minus
    return ches_part, ln_part


def pair_contributions(
    model: Any,
    tokenized: TokenizedPair,
    *,
    decode: Callable[[int], str] | None = None,
    via_ches: bool | None = None,
) -> PairContributions:
    """Recompute one pair's hidden states and split its scores over the rejected tokens.

    ``via_ches``: see :func:`hidden_states` (None: the ``ches`` attention on CUDA only).
    """
    h_plus = hidden_states(model, tokenized.chosen.ids, via_ches=via_ches)
    h_minus = hidden_states(model, tokenized.rejected.ids, via_ches=via_ches)
    ches_part, ln_part = decompose(h_plus, tokenized.chosen, h_minus, tokenized.rejected)
    ids = tokenized.rejected.ids
    tokens = []
    for offset, position in enumerate(range(tokenized.rejected.start, tokenized.rejected.end)):
        target = position + 1
        token_id = ids[target] if target < len(ids) else None
        if token_id is None:
            text = END_TOKEN_TEXT
        else:
            text = decode(token_id) if decode is not None else str(token_id)
        tokens.append(
            TokenContribution(
                position=position,
                token_id=token_id,
                text=text,
                ches=float(ches_part[offset]),
                ln_ches=float(ln_part[offset]),
            )
        )
    return PairContributions(
        row_id=tokenized.row_id,
        tokens=tuple(tokens),
        ches=float(ches_part.sum()),
        ln_ches=float(ln_part.sum()),
    )
