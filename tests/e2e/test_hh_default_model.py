"""Issue 2's acceptance run: the first 200 HH-RLHF pairs with the bundled default model.

``ches score ../shared/data/hh-rlhf-harmless-base-test.jsonl.gz --limit 200`` on CPU writes shards
whose scores equal the one-pair-at-a-time reference, each within the bound float32 justifies
(``score_fixtures.assert_scores_close``). About ten minutes on a 2-core CPU, so it is behind
the ``slow`` marker: ``pytest -m slow tests/e2e/test_hh_default_model.py``. It needs the whole
HH-RLHF split beside the checkout and skips without it.
"""

from __future__ import annotations

from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
from score_fixtures import assert_scores_close, state_magnitudes
from typer.testing import CliRunner

from ches_filter.cli.app import app
from ches_filter.data.layouts import LayoutOptions, detect_layout
from ches_filter.data.sources import SourceSpec, open_source
from ches_filter.model.load import ModelSpec, load_model
from ches_filter.records import TokenizedPair
from ches_filter.reference import reference_scores
from ches_filter.tokenization import PairTokenizer

pytestmark = pytest.mark.slow


def test_first_200_hh_pairs_equal_reference(hh_file, tmp_path):
    out = tmp_path / "hh"
    result = CliRunner().invoke(app, ["score", str(hh_file), "--limit", "200", "--output", str(out)])
    assert result.exit_code == 0, result.output
    rows = pq.read_table(out / "data").to_pylist()
    assert [r["row_id"] for r in rows] == list(range(200))

    loaded = load_model(ModelSpec(device="cpu"))
    source = open_source(SourceSpec(str(hh_file)), limit=200)
    layout = detect_layout(source.columns(), source.peek(100), LayoutOptions())
    tokenizer = PairTokenizer(loaded.tokenizer)
    checked = 0
    for (row_id, row), written in zip(source, rows, strict=True):
        pair = layout.extract(row_id, row)
        encoded = tokenizer.encode(pair) if hasattr(pair, "chosen_text") else pair
        if not isinstance(encoded, TokenizedPair) or encoded.identical:
            assert written["status"] != "ok"
            continue
        assert written["status"] == "ok", written["reason"]
        ref = reference_scores(loaded.model, encoded)
        assert_scores_close(SimpleNamespace(**written), ref, state_magnitudes(loaded.model, encoded))
        checked += 1
    assert checked >= 190
