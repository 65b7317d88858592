"""The score registry is the one declaration of the score columns: everything else follows it."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import ches_filter
from ches_filter import score_registry
from ches_filter.cli.filter_cmd import ScoreBy
from ches_filter.data.shards import SCORE_COLUMNS, SCORE_SCHEMA
from ches_filter.pipeline import SUMMARY_SCORES
from ches_filter.records import PairScores
from ches_filter.selection import SCORE_BY, Rule, select

REPO = Path(__file__).resolve().parents[2]


def test_the_shard_schema_is_the_registry() -> None:
    assert tuple(c.name for c in score_registry.COLUMNS) == SCORE_COLUMNS
    for declared in score_registry.COLUMNS:
        field = SCORE_SCHEMA.field(declared.name)
        assert field.type == pa.type_for_alias(declared.dtype)
        assert field.nullable == declared.nullable
    # The four risk scores are float64, as the spec's float64 math produces them.
    for name in score_registry.RANKABLE:
        assert SCORE_SCHEMA.field(name).type == pa.float64()


def test_every_score_column_is_a_field_of_pair_scores() -> None:
    fields = set(PairScores.__dataclass_fields__)
    assert {c.name for c in score_registry.COLUMNS} - {"pair_id"} <= fields


def test_by_choices_selection_summary_and_report_follow_the_registry() -> None:
    assert [member.value for member in ScoreBy] == list(score_registry.RANKABLE)
    assert SCORE_BY == score_registry.RANKABLE
    assert SCORE_BY[0] == score_registry.DEFAULT_BY == "ln_ches"
    assert SUMMARY_SCORES == score_registry.SUMMARISED
    assert set(SCORE_BY) == {"ches", "ln_ches", "last_hidden_inner", "edit_distance"}


@pytest.mark.parametrize("name", score_registry.RANKABLE)
def test_selection_direction_follows_the_registry(name: str) -> None:
    # Independent expectation: only the edit distance ranks a *smaller* value as riskier (a
    # smaller distance means more similar responses); every CHES-like score ranks larger first.
    score = np.array([0.1, 0.3, 0.2])
    chosen = select(Rule("top_k", 1, by=name), row_id=np.arange(3), status=np.array(["ok"] * 3,
                    dtype=object), score=score)
    removed = int(np.flatnonzero(chosen.removed_by_rule)[0])
    assert removed == (0 if name == "edit_distance" else 1)
    assert score_registry.lower_is_riskier(name) == (name == "edit_distance")


def test_docs_column_table_is_the_registry() -> None:
    docs = (REPO / "docs" / "scores.md").read_text(encoding="utf-8")
    assert score_registry.columns_table_markdown() in docs, (
        "docs/scores.md's column table differs from ches_filter.score_registry: paste "
        "score_registry.columns_table_markdown() into it"
    )


def _enumerations(tree: ast.AST, names: set[str]) -> list[int]:
    """Line numbers of tuples, lists, sets, dict literals or classes naming three or more scores.

    (Two are fine: ``ches`` and ``ln_ches`` together are CHES itself, e.g. its length analysis.)
    """
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            items = node.elts
        elif isinstance(node, ast.Dict):
            items = [k for k in node.keys if k is not None]
        elif isinstance(node, ast.ClassDef):
            items = [n.value for n in node.body if isinstance(n, ast.Assign)]
        else:
            continue
        named = {i.value for i in items if isinstance(i, ast.Constant) and i.value in names}
        if len(named) >= 3:
            lines.append(node.lineno)
    return sorted(lines)


def test_no_module_lists_the_scores_itself() -> None:
    """A list of score names lives in the registry only (the next scores are added there)."""
    allowed = {"score_registry.py", "scores.py", "records.py", "reference.py"}
    root = Path(ches_filter.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path.name not in allowed:
            tree = ast.parse(path.read_text(encoding="utf-8"))
            offenders += [f"{path.relative_to(root)}:{line}"
                          for line in _enumerations(tree, set(score_registry.RANKABLE))]
    assert not offenders, "read the score names from ches_filter.score_registry: " + ", ".join(offenders)


def test_the_enumeration_check_can_fail() -> None:
    tree = ast.parse('X = ("ln_ches", "ches", "edit_distance")\nclass E:\n    a = "ches"\n'
                     '    b = "edit_distance"\n    c = "last_hidden_inner"\nY = ("ches", "ln_ches")\n')
    assert _enumerations(tree, set(score_registry.RANKABLE)) == [1, 2]
