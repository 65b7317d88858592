"""scripts/compare_rankings.py: the rank statistics docs/performance.md quotes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "compare_rankings.py"
spec = importlib.util.spec_from_file_location("compare_rankings", SCRIPT)
assert spec and spec.loader
compare_rankings = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_rankings)


def test_spearman_is_the_reports() -> None:
    from ches_filter.report import spearman

    x = np.array([0.5, -2.0, 7.0, 3.0, 1.0])
    found = compare_rankings.compare(x, np.exp(x))
    assert found["spearman"] == spearman(x, np.exp(x)) == pytest.approx(1.0)


def test_top_overlap_counts_the_riskiest() -> None:
    x = np.arange(100.0)  # riskiest: 99, 98, ...
    y = x.copy()
    y[99], y[0] = y[0], y[99]  # A's riskiest pair is B's least risky
    assert compare_rankings.top_overlap(x, y, 0.05) == (4, 5)
    assert compare_rankings.top_overlap(x, x, 0.001) == (1, 1)  # at least one pair


def test_compares_two_score_folders(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name, values in (("a", [1.0, 2.0, 3.0, None]), ("b", [1.5, 2.5, float("nan"), 4.0])):
        folder = tmp_path / name / "data"
        folder.mkdir(parents=True)
        table = pa.table({"row_id": [0, 1, 2, 3], "status": ["ok"] * 4, "ln_ches": values})
        pq.write_table(table, folder / "train-00000-of-00001.parquet")
    x, y = compare_rankings.matched(tmp_path / "a", tmp_path / "b", "ln_ches")
    assert x.tolist() == [1.0, 2.0] and y.tolist() == [1.5, 2.5]  # rows ok and finite in both


def test_table_reports_top_and_lowest_overlaps() -> None:
    x = np.arange(40.0)
    lines = compare_rankings.table({"ln_ches": compare_rankings.compare(x, x)})
    assert lines[0].endswith("| lowest-5% overlap |")
    assert lines[2] == "| ln_ches | 40 | 1.0000 | 1/1 | 2/2 | 4/4 | 2/2 |"
