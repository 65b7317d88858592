"""ches-filter: find the preference pairs that cause likelihood displacement in DPO.

The library under the ``ches`` command. Heavy dependencies (torch, transformers) load on first
use, so ``import ches_filter`` is cheap::

    import ches_filter
    rows = ches_filter.score_pairs([{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}])
    result = ches_filter.score_dataset("pairs.jsonl", output="scores/")
    ches_filter.filter_scores("scores/", output="kept/", rule=ches_filter.Rule("keep_lowest", 0.05))
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("ches-filter")
except PackageNotFoundError:  # a source tree that isn't installed
    __version__ = "0+unknown"

#: public name -> module that defines it (imported on first access)
_EXPORTS = {
    "score_dataset": "ches_filter.pipeline",
    "plan_scoring": "ches_filter.pipeline",
    "run_scoring": "ches_filter.pipeline",
    "ScorePlan": "ches_filter.pipeline",
    "score_pairs": "ches_filter.pipeline",
    "ScoreOptions": "ches_filter.pipeline",
    "ScoreResult": "ches_filter.pipeline",
    "PairScorer": "ches_filter.pipeline",
    "ModelSpec": "ches_filter.model.load",
    "load_model": "ches_filter.model.load",
    "filter_scores": "ches_filter.filtering",
    "filter_dataset": "ches_filter.filtering",
    "Rule": "ches_filter.selection",
    "select": "ches_filter.selection",
    "build_report": "ches_filter.report",
    "report_for": "ches_filter.report",
    "read_manifest": "ches_filter.data.manifest",
    "read_scores": "ches_filter.data.score_folder",
    "ChesError": "ches_filter.errors",
    "Status": "ches_filter.records",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ches_filter' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
