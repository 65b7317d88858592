"""Selection rules over score columns: which pairs a filter removes. Pure numpy, no I/O.

One total order ranks every *rankable* pair (status ``ok`` and a finite score) from riskiest
to least risky: by the score, descending (ascending for a score whose registry entry says
lower is riskier, such as ``edit_distance``: a smaller distance means more similar responses), ties broken by ``row_id`` ascending. Every rule is
a cut of that order, so a rerun selects the same rows and ``--keep-lowest F`` is
``--top-k (n - kept)`` under the same order.

Rows that are not rankable (any status other than ``ok``: identical and truncation-collapsed
pairs carry ``ches = 0`` but are degenerate, not informative; or an ``ok`` row whose score is
null/NaN) are never ranked. Whether they are kept is the caller's explicit choice.

Fractions: a fraction F of n ranked pairs means ``ceil(F * n)`` pairs, after removing
floating-point noise (``0.1 * 30`` counts as 3, not 4). So any F > 0 selects at least one pair
when there is one, and F = 1 selects all of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from . import score_registry
from .errors import OptionError

RuleKind = Literal["top_k", "top_fraction", "threshold", "keep_lowest", "quantile_window"]
RULE_KINDS: tuple[str, ...] = ("top_k", "top_fraction", "threshold", "keep_lowest", "quantile_window")
#: The scores a rule can rank by, and which way is riskier: from the score registry.
SCORE_BY: tuple[str, ...] = score_registry.RANKABLE
LOWER_IS_RISKIER = score_registry.LOWER_IS_RISKIER
DEFAULT_BY = score_registry.DEFAULT_BY

_FRACTION_EPS = 1e-9


@dataclass(frozen=True)
class Rule:
    """One selection rule. ``value`` is K, F, T, F or Q depending on ``kind``; ``n`` is the
    window size of ``quantile_window``."""

    kind: RuleKind
    value: float
    n: int | None = None
    by: str = DEFAULT_BY

    def __post_init__(self) -> None:
        if self.kind not in RULE_KINDS:
            raise OptionError(f"unknown selection rule {self.kind!r}")
        if self.by not in SCORE_BY:
            raise OptionError(f"--by must be one of {', '.join(SCORE_BY)}, not {self.by!r}")
        value = self.value
        if not isinstance(value, (int, float)) or math.isnan(value):
            raise OptionError(f"the value of --{self.flag} must be a number, not {value!r}")
        if self.kind == "top_k" and (value < 0 or value != int(value)):
            raise OptionError(f"--top-k must be a whole number >= 0, not {value}")
        if self.kind in ("top_fraction", "keep_lowest", "quantile_window") and not 0 <= value <= 1:
            raise OptionError(f"--{self.flag} must be between 0 and 1, not {value}")
        if self.kind == "threshold" and math.isinf(value):
            raise OptionError("--threshold must be finite")
        if self.kind == "quantile_window":
            if self.n is None or self.n < 0:
                raise OptionError("--quantile-window needs --n N (a whole number >= 0)")
        elif self.n is not None:
            raise OptionError("--n only goes with --quantile-window")

    @property
    def flag(self) -> str:
        return self.kind.replace("_", "-")

    @property
    def lower_is_riskier(self) -> bool:
        return self.by in LOWER_IS_RISKIER

    def describe(self) -> str:
        """A one-line description for people, e.g. ``drop the 100 highest ln_ches``."""
        high, low = ("lowest", "highest") if self.lower_is_riskier else ("highest", "lowest")
        above = "below" if self.lower_is_riskier else "above"
        if self.kind == "top_k":
            return f"drop the {int(self.value)} {high}-{self.by} pairs"
        if self.kind == "top_fraction":
            return f"drop the {high} {self.value:g} fraction of pairs by {self.by}"
        if self.kind == "threshold":
            return f"drop pairs with {self.by} {above} {self.value:g}"
        if self.kind == "keep_lowest":
            return f"keep only the {low} {self.value:g} fraction of pairs by {self.by}"
        return f"keep the {self.n} pairs centred on quantile {self.value:g} of {self.by}"

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["description"] = self.describe()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rule:
        """The rule a filter manifest recorded (``to_dict``'s output; ``description`` ignored)."""
        try:
            return cls(kind=data["kind"], value=data["value"], n=data.get("n"),
                       by=data.get("by", DEFAULT_BY))
        except (KeyError, TypeError) as exc:
            raise OptionError(f"not a selection rule: {dict(data)!r:.200}") from exc


def rule_from_flags(
    *,
    top_k: int | None = None,
    top_fraction: float | None = None,
    threshold: float | None = None,
    keep_lowest: float | None = None,
    quantile_window: float | None = None,
    n: int | None = None,
    by: str = DEFAULT_BY,
) -> Rule:
    """The one rule given by ``ches filter``'s rule options (exactly one must be set)."""
    given = {
        "top_k": top_k,
        "top_fraction": top_fraction,
        "threshold": threshold,
        "keep_lowest": keep_lowest,
        "quantile_window": quantile_window,
    }
    chosen = {k: v for k, v in given.items() if v is not None}
    if len(chosen) != 1:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise OptionError(
            "pass exactly one selection rule"
            + (f" (got {', '.join('--' + k.replace('_', '-') for k in chosen)})" if chosen else ""),
            hint=f"one of {flags}; e.g. --keep-lowest 0.05 (the paper's recipe)",
        )
    ((kind, value),) = chosen.items()
    if n is not None and kind != "quantile_window":
        raise OptionError("--n only goes with --quantile-window")
    return Rule(kind=kind, value=value, n=n, by=by)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Selection:
    """What a rule decided, aligned with the input arrays (one entry per row).

    ``keep`` is True for rows to keep; unrankable rows are kept or dropped per
    ``keep_unscored``. ``cutoff`` is the rule's boundary on the score: ``T`` for ``threshold``,
    otherwise the score of the least risky removed ranked pair (None when none was removed;
    for ``quantile_window``, see ``kept_range``). ``kept_range`` is (min, max) of the kept
    ranked scores, None when none was kept.
    """

    rule: Rule
    keep: np.ndarray
    rankable: np.ndarray
    removed_by_rule: np.ndarray
    cutoff: float | None
    kept_range: tuple[float, float] | None
    keep_unscored: bool

    @property
    def n_rows(self) -> int:
        return int(self.keep.size)

    @property
    def n_ranked(self) -> int:
        return int(self.rankable.sum())

    @property
    def n_unscored(self) -> int:
        return self.n_rows - self.n_ranked

    @property
    def n_kept(self) -> int:
        return int(self.keep.sum())

    @property
    def n_removed(self) -> int:
        return self.n_rows - self.n_kept

    def counts(self) -> dict[str, int]:
        removed_rule = int(self.removed_by_rule.sum())
        unscored_kept = self.n_unscored if self.keep_unscored else 0
        return {
            "rows": self.n_rows,
            "ranked": self.n_ranked,
            "kept": self.n_kept,
            "removed": self.n_removed,
            "removed_by_rule": removed_rule,
            "kept_ranked": self.n_ranked - removed_rule,
            "unscored": self.n_unscored,
            "unscored_kept": unscored_kept,
            "unscored_dropped": self.n_unscored - unscored_kept,
        }


def fraction_count(fraction: float, n: int) -> int:
    """``ceil(fraction * n)`` with floating-point noise removed; 0 <= result <= n."""
    raw = fraction * n
    nearest = round(raw)
    count = nearest if abs(raw - nearest) <= _FRACTION_EPS * max(1.0, abs(raw)) else math.ceil(raw)
    return int(min(max(count, 0), n))


def rankable_mask(status: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Rows that can be ranked: status ``ok`` and a finite score (NaN marks a null)."""
    status = np.asarray(status, dtype=object)
    score = np.asarray(score, dtype=np.float64)
    return (status == "ok") & np.isfinite(score)


def risk_order(row_id: np.ndarray, score: np.ndarray, *, lower_is_riskier: bool) -> np.ndarray:
    """Indices into the arrays, riskiest first; ties broken by ``row_id`` ascending.

    Only pass rankable rows (finite scores)."""
    score = np.asarray(score, dtype=np.float64)
    key = score if lower_is_riskier else -score
    # np.lexsort sorts by the last key first: primary = risk key, secondary = row_id.
    return np.lexsort((np.asarray(row_id, dtype=np.int64), key))


def select(
    rule: Rule,
    *,
    row_id: np.ndarray,
    status: np.ndarray,
    score: np.ndarray,
    keep_unscored: bool = True,
) -> Selection:
    """Apply ``rule`` to one score column. Arrays are aligned, one entry per row.

    ``score`` is float64 with NaN for nulls (``pyarrow`` ``to_numpy(zero_copy_only=False)`` on a
    float column gives exactly that).
    """
    row_id = np.asarray(row_id, dtype=np.int64)
    score = np.asarray(score, dtype=np.float64)
    if not (row_id.shape == score.shape == np.shape(status)):
        raise ValueError("row_id, status and score must have the same length")
    rankable = rankable_mask(status, score)
    ranked_idx = np.flatnonzero(rankable)
    order = ranked_idx[
        risk_order(row_id[ranked_idx], score[ranked_idx], lower_is_riskier=rule.lower_is_riskier)
    ]
    n = order.size
    remove_ranked = np.zeros(n, dtype=bool)  # aligned with `order` (riskiest first)
    if rule.kind == "top_k":
        remove_ranked[: min(int(rule.value), n)] = True
    elif rule.kind == "top_fraction":
        remove_ranked[: fraction_count(rule.value, n)] = True
    elif rule.kind == "keep_lowest":
        remove_ranked[: n - fraction_count(rule.value, n)] = True
    elif rule.kind == "threshold":
        ranked_scores = score[order]
        if rule.lower_is_riskier:
            remove_ranked = ranked_scores < rule.value
        else:
            remove_ranked = ranked_scores > rule.value
    else:  # quantile_window over the least-risky-first order
        window = min(int(rule.n or 0), n)
        remove_ranked[:] = True
        if window > 0:
            centre = rule.value * (n - 1)
            start = math.floor(centre - (window - 1) / 2 + 0.5)
            start = min(max(start, 0), n - window)
            # position i in least-risky-first order is n - 1 - i in riskiest-first order
            lo, hi = n - (start + window), n - start
            remove_ranked[lo:hi] = False

    removed_by_rule = np.zeros(row_id.size, dtype=bool)
    removed_by_rule[order[remove_ranked]] = True
    keep = rankable & ~removed_by_rule
    if keep_unscored:
        keep |= ~rankable

    cutoff: float | None
    if rule.kind == "threshold":
        cutoff = float(rule.value)
    else:
        removed_scores = score[order[remove_ranked]]
        if removed_scores.size == 0 or rule.kind == "quantile_window":
            cutoff = None
        else:
            cutoff = float(removed_scores.max() if rule.lower_is_riskier else removed_scores.min())
    kept_scores = score[order[~remove_ranked]]
    kept_range = (float(kept_scores.min()), float(kept_scores.max())) if kept_scores.size else None
    return Selection(
        rule=rule,
        keep=keep,
        rankable=rankable,
        removed_by_rule=removed_by_rule,
        cutoff=cutoff,
        kept_range=kept_range,
        keep_unscored=keep_unscored,
    )
