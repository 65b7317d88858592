"""docs/scores.md documents every status a row can get (#12: "docs/scores.md lists every status")."""

from __future__ import annotations

import re
from pathlib import Path

from ches_filter.records import Status

DOCS = Path(__file__).resolve().parents[2] / "docs" / "scores.md"


def test_every_status_has_a_row_in_the_statuses_table():
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("## Statuses", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE)
    assert sorted(documented) == sorted(status.value for status in Status)
