"""The score registry: every column ``ches score`` appends to a row, declared once.

Each :class:`ScoreColumn` gives a column's name, Arrow type, whether a higher or a lower value
means riskier (for the risk scores), whether ``ches filter --by``/``ches report --by`` can rank
by it, whether the score summary shows its quantiles, and the description that docs/scores.md
shows. The Parquet schema (:data:`ches_filter.data.shards.SCORE_SCHEMA`), the ``--by`` choices,
the selection order, the report and the summary read these declarations; a test checks that
docs/scores.md's column table is :func:`columns_table_markdown`. A new score is one more entry
here (plus its math in :mod:`ches_filter.scores` and a field of ``PairScores``).

No third-party import: the CLI reads this module to build ``--help``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Direction = Literal["higher", "lower"]


@dataclass(frozen=True)
class ScoreColumn:
    name: str
    #: Arrow type name, as ``pyarrow.<dtype>()`` builds it (``int64``, ``string``, ``float64`` …)
    dtype: str
    description: str
    nullable: bool = True
    #: which way is riskier (more likely to cause likelihood displacement); None: not a risk score
    direction: Direction | None = None
    #: ``--by`` can rank by it (filter, report)
    ranks: bool = False
    #: the score summary (``ches score``'s table, the manifest) shows its quantiles
    summarised: bool = False
    #: a short label for plots and tables
    label: str = ""
    #: shown beside the ranking score in the report's list of top pairs
    in_top_table: bool = False

    @property
    def lower_is_riskier(self) -> bool:
        return self.direction == "lower"


#: Every score column, in the order they follow the original columns of a row.
COLUMNS: tuple[ScoreColumn, ...] = (
    ScoreColumn(
        "row_id", "int64", nullable=False,
        description="0-based position of the row in the input (kept by `--limit` and `--sample`)",
    ),
    ScoreColumn(
        "pair_id", "string", nullable=False,
        description="32 hex digits of SHA-256 over the normalised pair (prompt turns, chosen, "
        "rejected): the same pair gets the same id in any file, layout or position; a row that "
        "could not be read as a pair is hashed from its raw fields",
    ),
    ScoreColumn(
        "status", "string", nullable=False,
        description="`ok`, or why the row has no (or degenerate) scores: see below",
    ),
    ScoreColumn("reason", "string", description="one sentence for people, naming the field; null when `ok`"),
    ScoreColumn(
        "ches", "float64", direction="higher", ranks=True, summarised=True, in_top_table=True,
        label="ches (raw CHES)",
        description="`<S+, S-> − ‖S+‖²` (Definition 2 of the paper)",
    ),
    ScoreColumn(
        "ln_ches", "float64", direction="higher", ranks=True, summarised=True, in_top_table=True,
        label="ln_ches (length-normalised CHES)",
        description="`<S+/n+, S-/n-> − ‖S+/n+‖²`: CHES of the mean hidden states; **the paper "
        "filters by this one**, and so does `ches filter` by default",
    ),
    ScoreColumn(
        "last_hidden_inner", "float64", direction="higher", ranks=True, summarised=True,
        label="last_hidden_inner (final hidden states)",
        description="`<h+_last, h-_last>`: inner product of the hidden states at the final "
        "position of each full sequence (a baseline of the paper)",
    ),
    ScoreColumn(
        "edit_distance", "float64", direction="lower", ranks=True, summarised=True, in_top_table=True,
        label="edit_distance (normalised token Levenshtein)",
        description="Levenshtein distance between the two response token-id sequences, divided "
        "by the longer one's length, in [0, 1] (a baseline; *lower* = more similar)",
    ),
    ScoreColumn("dot_chosen_rejected", "float64", description="`<S+, S->`"),
    ScoreColumn("sq_norm_chosen", "float64", description="`‖S+‖²`"),
    ScoreColumn("sq_norm_rejected", "float64", description="`‖S-‖²`"),
    ScoreColumn(
        "prompt_tokens", "int32",
        description="P, the prompt's token count (chat template included)",
    ),
    ScoreColumn(
        "chosen_tokens", "int32",
        description=(
            "n+, the number of summed positions, which `ln_ches` divides by: the chosen response's "
            "token count as scored (end-of-turn or EOS included); under `--compat official`, whose sum "
            "runs through the final position, the response's token count + 1 (what the official "
            "script divides by)"
        ),
    ),
    ScoreColumn("rejected_tokens", "int32", description="n-, likewise for the rejected response"),
    ScoreColumn("truncated", "bool", description="a response was cut to `--max-length` (by default the model's context; never the prompt)"),
)

BY_NAME: dict[str, ScoreColumn] = {column.name: column for column in COLUMNS}
#: The score ``ches filter`` and ``ches report`` rank by unless ``--by`` says otherwise.
DEFAULT_BY = "ln_ches"
#: Scores that can rank, the default first, then in column order (the ``--by`` choices).
RANKABLE: tuple[str, ...] = (DEFAULT_BY,) + tuple(
    c.name for c in COLUMNS if c.ranks and c.name != DEFAULT_BY
)
#: Scores whose quantiles the summary shows, in column order.
SUMMARISED: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.summarised)
#: Scores for which a *lower* value means riskier (more similar responses).
LOWER_IS_RISKIER: frozenset[str] = frozenset(c.name for c in COLUMNS if c.lower_is_riskier)
#: Scores shown beside the ranking score in the report's list of top pairs, in ``RANKABLE`` order.
TOP_TABLE: tuple[str, ...] = tuple(name for name in RANKABLE if BY_NAME[name].in_top_table)

if DEFAULT_BY not in BY_NAME or not BY_NAME[DEFAULT_BY].ranks:  # pragma: no cover - a typo here
    raise RuntimeError(f"the default ranking score {DEFAULT_BY!r} is not a rankable column")


def column(name: str) -> ScoreColumn:
    return BY_NAME[name]


def lower_is_riskier(name: str) -> bool:
    return BY_NAME[name].lower_is_riskier


def label(name: str) -> str:
    return BY_NAME[name].label or name


def columns_table_markdown() -> str:
    """The column table of docs/scores.md (a test checks the docs hold exactly this)."""
    lines = [
        "| column | type | what it holds |",
        "|---|---|---|",
        "| *(original columns)* | as in the input | unchanged values, in the input's column order |",
    ]
    lines += [f"| `{c.name}` | {c.dtype} | {c.description} |" for c in COLUMNS]
    return "\n".join(lines) + "\n"
