"""``score_dataset`` as plan -> run -> summary: each part on its own."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ches_filter import pipeline
from ches_filter.errors import OutputError
from ches_filter.pipeline import (
    PairScorer,
    extract_window,
    output_rows,
    plan_scoring,
    read_windows,
    run_scoring,
    score_window,
)

EXAMPLE = Path(pipeline.__file__).parent / "examples" / "preference_pairs.jsonl"


@pytest.fixture(scope="module")
def scored(tiny_llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("steps") / "out"
    plan = plan_scoring(EXAMPLE, output=out, model=str(tiny_llama_dir), device="cpu", dtype="float32")
    return plan, run_scoring(plan)


def _linear_quantile(values: list[float], q: float) -> float:
    """Quantile with linear interpolation between order statistics (numpy's default), by hand."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def test_the_summary_matches_the_written_rows(scored) -> None:
    plan, result = scored
    rows = pq.read_table(plan.output / "data").to_pylist()
    summary = result.summary
    assert summary["rows"] == len(rows) == 16
    assert summary["by_status"] == dict(Counter(r["status"] for r in rows))
    ok = [r for r in rows if r["status"] == "ok"]
    assert summary["scored"] == len(ok) and summary["unscored"] == len(rows) - len(ok)
    assert summary["truncated"] == sum(bool(r["truncated"]) for r in rows)
    for name, quantiles in summary["quantiles"].items():
        values = [r[name] for r in ok if r[name] is not None]
        # The same float64 values go through both computations; only summation order differs.
        assert quantiles["median"] == pytest.approx(_linear_quantile(values, 0.5), rel=1e-12)
        assert quantiles["p25"] == pytest.approx(_linear_quantile(values, 0.25), rel=1e-12)
        assert quantiles["min"] == min(values) and quantiles["max"] == max(values)
        assert quantiles["mean"] == pytest.approx(sum(values) / len(values), rel=1e-12)
    riskiest = sorted(ok, key=lambda r: (-r["ln_ches"], r["row_id"]))[: pipeline.TOP_PAIRS]
    assert [t["row_id"] for t in summary["top"]] == [r["row_id"] for r in riskiest]
    first = summary["top"][0]
    assert first["ln_ches"] == riskiest[0]["ln_ches"]
    assert first["chosen"] == pipeline.excerpt(riskiest[0]["chosen"])
    assert result.manifest["counts"]["by_status"] == summary["by_status"]


def test_the_run_keeps_counters_not_lists_of_scores() -> None:
    assert set(pipeline._Totals.__dataclass_fields__) == {"rows", "by_status"}


def test_planning_loads_no_model_and_writes_nothing(tiny_llama_dir, tmp_path, monkeypatch) -> None:
    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded while planning")

    monkeypatch.setattr(pipeline, "load_model", no_load)
    plan = plan_scoring(EXAMPLE, output=tmp_path / "fresh" / "out", model=str(tiny_llama_dir),
                        device="cpu", dtype="float32", max_length=64)
    assert plan.layout.name == "standard" and plan.schema.names[-1] == "truncated"
    assert plan.options.max_length == 64 and plan.resolved.kind == "local"
    assert not (tmp_path / "fresh").exists()  # the output folder is prepared by the run
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(OutputError, match="is not empty"):
        plan_scoring(EXAMPLE, output=tmp_path / "busy", model=str(tiny_llama_dir), device="cpu")


def test_the_steps_can_be_driven_by_hand(scored, tiny_llama) -> None:
    """extract -> score -> rows, driven outside run_scoring, give the rows the run wrote."""
    plan, _ = scored
    scorer = PairScorer(tiny_llama, plan.options.tokenization_options())
    produced = []
    for rows in read_windows(plan.source, plan.window):
        window = extract_window(plan.layout, rows)
        produced += output_rows(window, score_window(scorer, window))
    written = pq.read_table(plan.output / "data").to_pylist()
    assert len(produced) == len(written)
    for mine, theirs in zip(produced, written, strict=True):
        assert mine.keys() == theirs.keys()
        for key, value in theirs.items():
            if isinstance(value, float):
                # Same model, same windows and batches on one CPU: equal up to float32 rounding
                # of the hidden-state sums (relative 1e-6 of the value, 1e-6 absolute near 0).
                assert mine[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key
            else:
                assert mine[key] == value, key
