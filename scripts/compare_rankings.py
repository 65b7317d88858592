"""How much two scorings of the same dataset agree on the ranking users act on.

    python scripts/compare_rankings.py SCORES_A SCORES_B [--by ln_ches,ches]

SCORES_A and SCORES_B are `ches score` output folders of the same dataset (for example one
scored with `--dtype float32`, one with `--dtype bfloat16`, or two models). Pairs are matched
by `row_id`; only pairs that are `ok` with a finite score in both count. Prints, per score,
Spearman's rank correlation, how many of A's top 1 %, 5 % and 10 % (riskiest first, as
`ches filter` ranks them) are also in B's, and the same for the lowest 5 % (what
`--keep-lowest 0.05` keeps), as a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FRACTIONS = (0.01, 0.05, 0.10)
LOWEST = 0.05


def top_overlap(x: np.ndarray, y: np.ndarray, fraction: float) -> tuple[int, int]:
    """(how many of x's top k are in y's top k, k), k = round(fraction x n), at least 1."""
    k = max(1, int(round(len(x) * fraction)))
    a = set(np.argsort(-x, kind="mergesort")[:k].tolist())
    b = set(np.argsort(-y, kind="mergesort")[:k].tolist())
    return len(a & b), k


def compare(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    from ches_filter.report import spearman  # average ranks for ties, as the report's

    return {
        "pairs": len(x),
        "spearman": spearman(x, y),
        "top_overlap": [top_overlap(x, y, f) for f in FRACTIONS],
        "lowest_overlap": top_overlap(-x, -y, LOWEST),
    }


def table(rows: dict[str, dict[str, Any]]) -> list[str]:
    heads = " | ".join(f"top-{f:.0%} overlap" for f in FRACTIONS)
    lines = [
        f"| score | pairs | Spearman | {heads} | lowest-{LOWEST:.0%} overlap |",
        "|---|---:|---:|" + "---:|" * (len(FRACTIONS) + 1),
    ]
    for name, found in rows.items():
        overlaps = [*found["top_overlap"], found["lowest_overlap"]]
        cells = " | ".join(f"{hit}/{k}" for hit, k in overlaps)
        rho = "—" if found["spearman"] is None else f"{found['spearman']:.4f}"
        lines.append(f"| {name} | {found['pairs']:,} | {rho} | {cells} |")
    return lines


def matched(a_dir: Path, b_dir: Path, score: str) -> tuple[np.ndarray, np.ndarray]:
    from ches_filter.data.score_folder import read_scores

    def ok_scores(folder: Path) -> dict[int, float]:
        columns = read_scores(folder, columns=["row_id", "status", score]).to_pydict()
        return {
            row: value
            for row, status, value in zip(columns["row_id"], columns["status"], columns[score], strict=True)
            if status == "ok" and value is not None and np.isfinite(value)
        }

    a, b = ok_scores(a_dir), ok_scores(b_dir)
    rows = sorted(a.keys() & b.keys())
    return np.array([a[r] for r in rows]), np.array([b[r] for r in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scores_a", type=Path)
    parser.add_argument("scores_b", type=Path)
    parser.add_argument("--by", default="ln_ches,ches", help="comma-separated score columns")
    args = parser.parse_args(argv)
    rows = {name: compare(*matched(args.scores_a, args.scores_b, name)) for name in args.by.split(",")}
    print("\n".join(table(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
