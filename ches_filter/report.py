"""The displacement report: what the scores say, and which pairs are riskiest and why.

``build_report`` turns a ``ches score`` output (and optionally a filter's decision) into one
plain, JSON-able dict; the renderers turn that dict into a rich terminal view, Markdown (for PR
comments), JSON (for machines) and one self-contained HTML file (inline SVG plots, inline CSS, a
Content-Security-Policy that allows no script and no network request).

All dataset text is untrusted. Each renderer escapes it for its format: HTML entities;
Markdown specials, pipes, HTML and mentions in inline text, and fences longer than any backtick
run in block text; rich markup is never parsed from data (cells are ``Text`` objects); control
characters are shown as ``\\xNN`` everywhere so nothing can drive a terminal.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import score_registry
from .data.folders import check_report_file, folder_kind
from .data.manifest import FilterManifest, read_manifest
from .data.score_folder import (
    ScoreFolder,
    is_score_output,
    score_array,
    select_from_table,
    table_fingerprint,
)
from .data.shards import MANIFEST_NAME, atomic_write_bytes
from .data.values import decode_json_text, json_text_columns
from .errors import ChesError, DatasetError, ModelError, OutputError
from .selection import (
    DEFAULT_BY,
    LOWER_IS_RISKIER,
    SCORE_BY,
    Rule,
    Selection,
    rankable_mask,
    risk_order,
)

Log = Callable[[str], None]
Highlight = Literal["off", "auto", "on"]
FORMATS = ("terminal", "markdown", "json", "html")

REPORT_VERSION = 1
QUANTILES = {"min": 0.0, "p01": 0.01, "p05": 0.05, "p25": 0.25, "median": 0.5, "p75": 0.75,
             "p95": 0.95, "p99": 0.99, "max": 1.0}
HIST_BINS = 24
SCATTER_POINTS = 1500
HIGHLIGHT_AUTO_MAX_TOP = 50
UNSCORED_STATUSES = (
    "identical", "truncated_identical", "empty_response", "invalid_field", "ambiguous_prompt",
    "contradictory_label", "prompt_mismatch", "prompt_too_long", "too_long", "empty_prompt",
)
SCORE_LABELS = {name: score_registry.label(name) for name in SCORE_BY}


# --------------------------------------------------------------------------------------------
# Building the report data


def _finite(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values[np.isfinite(values)]


def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def score_stats(values: np.ndarray, *, bins: int = HIST_BINS) -> dict[str, Any]:
    """n, mean, std, quantiles (numpy's linear interpolation) and a histogram of finite values."""
    values = _finite(values)
    if values.size == 0:
        return {"n": 0, "mean": None, "std": None, "quantiles": None, "histogram": None}
    return {
        "n": int(values.size),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "quantiles": {k: float(np.quantile(values, q)) for k, q in QUANTILES.items()},
        "histogram": clipped_histogram(values, bins=bins),
    }


def clipped_histogram(values: np.ndarray, *, bins: int = HIST_BINS, tail: float = 0.01) -> dict[str, Any]:
    """Bins over the 1st to 99th percentile, the values beyond counted in the two edge bins.

    Raw CHES spans eight orders of magnitude on real data; bins over its full range put nearly
    every pair into one bar. ``below``/``above`` say how many values the edge bins hold from
    beyond their edges (so ``sum(counts) == n`` still holds).
    """
    lo, hi = (float(v) for v in np.quantile(values, [tail, 1 - tail]))
    if not lo < hi:
        lo, hi = float(values.min()), float(values.max())
    counts, edges = np.histogram(np.clip(values, lo, hi), bins=bins, range=(lo, hi) if lo < hi else None)
    return {
        "edges": [float(e) for e in edges],
        "counts": [int(c) for c in counts],
        "below": int((values < edges[0]).sum()),
        "above": int((values > edges[-1]).sum()),
    }


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.arange(x.size, dtype=np.float64)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None when undefined."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return None
    rx, ry = _average_ranks(x[ok]), _average_ranks(y[ok])
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def _length_section(table: pa.Table, ok: np.ndarray) -> dict[str, Any]:
    n_plus = table.column("chosen_tokens").to_numpy(zero_copy_only=False).astype(np.float64)[ok]
    n_minus = table.column("rejected_tokens").to_numpy(zero_copy_only=False).astype(np.float64)[ok]
    ches = score_array(table, "ches")[ok]
    ln = score_array(table, "ln_ches")[ok]
    diff = n_minus - n_plus
    total = n_minus + n_plus
    keep = np.isfinite(diff) & np.isfinite(ches) & np.isfinite(ln)
    idx = np.flatnonzero(keep)
    if idx.size > SCATTER_POINTS:  # a deterministic, evenly spread sample for the plots
        idx = idx[np.linspace(0, idx.size - 1, SCATTER_POINTS).round().astype(int)]
    return {
        "definition": "length difference = rejected_tokens - chosen_tokens (n- - n+)",
        "n": int(keep.sum()),
        "spearman": {
            "ches_vs_length_diff": spearman(ches, diff),
            "ln_ches_vs_length_diff": spearman(ln, diff),
            "ches_vs_total_length": spearman(ches, total),
            "ln_ches_vs_total_length": spearman(ln, total),
        },
        "sample": {
            "length_diff": [float(v) for v in diff[idx]],
            "ches": [float(v) for v in ches[idx]],
            "ln_ches": [float(v) for v in ln[idx]],
        },
    }


def _from_options(cls: Any, values: Mapping[str, Any]) -> Any:
    """Build a dataclass from the entries of ``values`` that name its fields."""
    if not is_dataclass(cls):
        return cls()
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names and v is not None})


def _read_rows(folder: ScoreFolder, row_ids: list[int]) -> dict[int, dict[str, Any]]:
    """The original columns of a few rows, read with a row_id predicate (no full scan to memory)."""
    if not row_ids:
        return {}
    wanted = pa.array(row_ids, type=pa.int64())
    columns = list(folder.original_columns) + ["row_id"]
    rows: dict[int, dict[str, Any]] = {}
    for shard in folder.shards:
        part = pq.read_table(shard, columns=columns, filters=pc.field("row_id").isin(wanted))
        # Columns stored as JSON text (--keep-json-columns) are decoded for the layout.
        for row in decode_json_text(part.to_pylist(), json_text_columns(part.schema)):
            rid = int(row.pop("row_id"))
            rows[rid] = row
    return rows


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) and "content" in m for m in value):
        return "\n\n".join(f"[{m.get('role', '?')}] {m.get('content') or ''}" for m in value)
    return json.dumps(value, ensure_ascii=False, default=str)


def _pairs_from_rows(
    folder: ScoreFolder, rows: dict[int, dict[str, Any]]
) -> tuple[dict[int, Any], str | None]:
    """PreferencePairs rebuilt by the dataset's layout adapter; a note when that can't be done."""
    if not rows:
        return {}, None
    try:
        from .data.layouts import LAYOUTS, LayoutOptions, detect_layout
    except ImportError:
        return {}, "the layout module is not available: texts are shown from the raw columns"
    try:
        recorded = dict(folder.manifest.get("options") or {})
        layout_name = (folder.manifest.get("input") or {}).get("layout")
        if layout_name in LAYOUTS:  # read the rows exactly as they were scored
            recorded["layout"] = layout_name
        options = _from_options(LayoutOptions, recorded)
        sample = list(rows.values())
        layout = detect_layout(list(folder.original_columns), sample, options)
    except ChesError as exc:
        return {}, f"layout not detected ({exc.message}): texts are shown from the raw columns"
    pairs: dict[int, Any] = {}
    problems = []
    for rid, row in rows.items():
        pair = layout.extract(rid, row)
        if hasattr(pair, "rejected_text"):
            pairs[rid] = pair
        else:
            problems.append(rid)
    note = None
    if problems:
        note = f"rows {', '.join(map(str, problems[:5]))} could not be parsed by the layout"
    return pairs, note


def _texts(row: dict[str, Any], pair: Any | None) -> dict[str, str]:
    if pair is not None:
        prompt = pair.prompt_text or "\n\n".join(f"[{t.role}] {t.content}" for t in pair.prompt)
        return {"prompt": prompt, "chosen": pair.chosen, "rejected": pair.rejected,
                "source": "layout"}
    return {
        "prompt": _as_text(row.get("prompt", row.get("question", ""))),
        "chosen": _as_text(row.get("chosen")),
        "rejected": _as_text(row.get("rejected")),
        "source": "columns",
    }


def _compute_highlights(
    folder: ScoreFolder,
    pairs: dict[int, Any],
    stored_ches: dict[int, float | None],
    *,
    device: str | None,
    log: Log,
) -> tuple[dict[int, dict[str, Any]], list[str]]:
    """Load the scoring model once and decompose CHES over the rejected tokens of ``pairs``."""
    from .contributions import pair_contributions
    from .model.load import DTYPES, ModelSpec, load_model
    from .tokenization import PairTokenizer, TokenizationOptions, tokenizer_fingerprint

    info = folder.manifest.get("model") or {}
    dtype = info.get("dtype") if info.get("dtype") in DTYPES else "auto"
    spec = ModelSpec(name=info.get("id"), revision=info.get("revision"), dtype=dtype,
                     device=device or "auto")
    log(f"loading {spec.name or 'the default model'} to highlight {len(pairs)} pairs")
    loaded = load_model(spec, log=log)
    notes = []
    recorded = info.get("tokenizer_fingerprint")
    if recorded and tokenizer_fingerprint(loaded.tokenizer) != recorded:
        notes.append("the tokenizer differs from the one used for scoring: shares may not match")
    options = _from_options(TokenizationOptions, folder.manifest.get("options") or {})
    convention = folder.manifest.get("convention")
    if convention in ("default", "official") and options.convention != convention:
        options = TokenizationOptions(
            use_chat_template=options.use_chat_template, max_length=options.max_length,
            convention=convention,
        )
    if info.get("chat_template") is False and options.use_chat_template:
        options = TokenizationOptions(use_chat_template=False, max_length=options.max_length,
                                      convention=options.convention)
    tokenizer = PairTokenizer(loaded.tokenizer, options)
    tokenizer.prepare_model(loaded.model)  # --compat official's added tokens, if any
    out: dict[int, dict[str, Any]] = {}
    mismatched = []
    for rid, pair in pairs.items():
        encoded = tokenizer.encode(pair)
        if not hasattr(encoded, "rejected"):
            notes.append(f"row {rid}: {encoded.reason}")
            continue
        contrib = pair_contributions(
            loaded.model, encoded, decode=lambda i: tokenizer.tokenizer.decode([i])
        )
        stored = stored_ches.get(rid)
        if stored is not None and abs(contrib.ches - stored) > 1e-2 * max(1.0, abs(stored)):
            mismatched.append(rid)
        out[rid] = contrib.to_dict()
    if mismatched:
        notes.append(
            "recomputed CHES differs from the stored score for rows "
            f"{', '.join(map(str, mismatched[:5]))} (another model, device or dtype?)"
        )
    return out, notes


def build_report(
    scores: ScoreFolder | Any,
    *,
    top: int = 20,
    by: str = DEFAULT_BY,
    table: pa.Table | None = None,
    filter_info: Mapping[str, Any] | None = None,
    selection: Selection | None = None,
    highlight: Highlight = "off",
    device: str | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Everything the renderers show, as one JSON-able dict.

    ``highlight``: ``off`` never loads a model; ``auto`` tries when ``top`` <= 50 and records
    why it could not; ``on`` raises if it can't. ``filter_info`` (a filter manifest) and
    ``selection`` add what a filter removed.
    """
    emit = log or (lambda _msg: None)
    if top < 0:
        raise ChesError("--top must be >= 0")
    if by not in SCORE_BY:
        raise ChesError(f"--by must be one of {', '.join(SCORE_BY)}, not {by!r}")
    folder = scores if isinstance(scores, ScoreFolder) else ScoreFolder.open(scores)
    if table is None:
        table = folder.read_score_table()
    manifest = folder.manifest
    row_id = table.column("row_id").to_numpy()
    status = np.asarray(table.column("status").to_pylist(), dtype=object)
    ok = status == "ok"
    by_status: dict[str, int] = {}
    for s in ["ok", *UNSCORED_STATUSES, *sorted(set(status) - {"ok", *UNSCORED_STATUSES})]:
        n = int((status == s).sum())
        if n:
            by_status[s] = n
    truncated = table.column("truncated").to_numpy(zero_copy_only=False)
    notes: list[str] = []
    recorded = (manifest.get("counts") or {}).get("by_status")
    if isinstance(recorded, dict) and {k: v for k, v in recorded.items() if v} != by_status:
        notes.append("the manifest's counts differ from the shards' (the shards are shown)")

    by_values = score_array(table, by)
    rankable = rankable_mask(status, by_values)
    ranked_idx = np.flatnonzero(rankable)
    order = ranked_idx[risk_order(row_id[ranked_idx], by_values[ranked_idx],
                                  lower_is_riskier=by in LOWER_IS_RISKIER)]
    n_ranked = int(order.size)
    counts = {
        "rows": int(table.num_rows),
        "by_status": by_status,
        "scored": int(ok.sum()),
        "ranked": n_ranked,
        "identical": by_status.get("identical", 0),
        "truncated_identical": by_status.get("truncated_identical", 0),
        "truncated_scored": int(np.sum((truncated == True) & ok)),  # noqa: E712 (object array)
        "unranked": int(table.num_rows - n_ranked),
    }
    score_section = {name: score_stats(score_array(table, name)[ok]) for name in SCORE_BY}

    top_idx = order[:top]
    top_ids = [int(row_id[i]) for i in top_idx]
    rows = _read_rows(folder, top_ids)
    pairs, layout_note = _pairs_from_rows(folder, rows)
    if layout_note:
        notes.append(layout_note)

    columns = {name: table.column(name).to_pylist() for name in (
        "pair_id", "status", *SCORE_BY, "prompt_tokens", "chosen_tokens", "rejected_tokens", "truncated")}
    stored_ches = {int(row_id[i]): _num(columns["ches"][i]) for i in top_idx}

    highlight_info: dict[str, Any] = {"status": "off", "message": None, "score": None}
    contributions: dict[int, dict[str, Any]] = {}
    wants = highlight == "on" or (highlight == "auto" and 0 < top <= HIGHLIGHT_AUTO_MAX_TOP)
    if wants and top_ids:
        missing = [rid for rid in top_ids if rid not in pairs]
        try:
            if missing:
                raise ModelError(
                    "token highlighting needs each pair rebuilt by its layout"
                    + (f" ({layout_note})" if layout_note else "")
                )
            contributions, hl_notes = _compute_highlights(
                folder, {rid: pairs[rid] for rid in top_ids}, stored_ches, device=device, log=emit
            )
            notes.extend(hl_notes)
            highlight_info = {
                "status": "computed",
                "message": f"rejected tokens shaded by their share of {'ln_ches' if by == 'ln_ches' else 'ches'}",
                "score": "ln_ches" if by == "ln_ches" else "ches",
            }
        except (ChesError, ImportError, OSError) as exc:
            if highlight == "on":
                if isinstance(exc, ChesError):
                    raise
                raise ModelError(f"token highlighting failed: {exc}") from exc
            message = exc.message if isinstance(exc, ChesError) else str(exc)
            highlight_info = {"status": "skipped", "score": None,
                              "message": f"token highlighting skipped: {message}"}
            emit(f"{highlight_info['message']} (pass --no-highlight to silence)")

    keep = selection.keep if selection is not None else None
    top_pairs = []
    for rank, i in enumerate(top_idx, start=1):
        rid = int(row_id[i])
        texts = _texts(rows.get(rid, {}), pairs.get(rid))
        top_pairs.append({
            "rank": rank,
            "row_id": rid,
            "pair_id": columns["pair_id"][i],
            # share of the other ranked pairs that this one outranks
            "percentile": 100.0 * (n_ranked - rank) / max(n_ranked - 1, 1),
            "scores": {name: _num(columns[name][i]) for name in SCORE_BY},
            "tokens": {name: columns[f"{name}_tokens"][i] for name in ("prompt", "chosen", "rejected")},
            "truncated": bool(columns["truncated"][i]),
            "removed": None if keep is None else not bool(keep[i]),
            "text": texts,
            "contributions": contributions.get(rid),
        })

    filter_section = None
    if filter_info is not None:
        filter_section = {
            "rule": filter_info.get("rule"),
            "by": filter_info.get("by"),
            "cutoff": filter_info.get("cutoff"),
            "kept_score_range": filter_info.get("kept_score_range"),
            "keep_unscored": filter_info.get("keep_unscored"),
            "counts": filter_info.get("counts"),
        }
        if selection is not None:
            removed_scores = by_values[selection.removed_by_rule]
            filter_section["removed_scores"] = score_stats(removed_scores)

    model = manifest.get("model") or {}
    inp = manifest.get("input") or {}
    return {
        "report_version": REPORT_VERSION,
        "by": by,
        "top_n": top,
        "provenance": {
            "tool": manifest.get("tool"),
            "spec_version": manifest.get("spec_version"),
            "convention": manifest.get("convention"),
            "command": manifest.get("command"),
            "created_at": manifest.get("created_at"),
            "model": {k: model.get(k) for k in ("id", "revision", "dtype", "device", "chat_template",
                                                 "tokenizer_fingerprint", "chat_template_fingerprint")},
            "input": {k: inp.get(k) for k in ("dataset", "split", "fingerprint", "layout",
                                               "layout_description", "columns")},
            "options": manifest.get("options"),
            "scores_fingerprint": table_fingerprint(table),
        },
        "counts": counts,
        "scores": score_section,
        "length": _length_section(table, ok),
        "filter": filter_section,
        "highlight": highlight_info,
        "notes": notes,
        "top": top_pairs,
    }


def report_for(
    path: Path | str,
    *,
    top: int = 20,
    by: str = DEFAULT_BY,
    highlight: Highlight = "off",
    device: str | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """The report of a ``ches score`` output, or of a ``ches filter`` output: then the report is
    on the scores it was filtered from (its manifest says where), with what the filter removed
    (its rule applied again to those scores)."""
    path = Path(path)
    source, filter_info, rule = path, None, None
    if (path / MANIFEST_NAME).is_file() and not is_score_output(path):
        manifest = read_manifest(path)
        if isinstance(manifest, FilterManifest) and manifest.kind == "filter":
            scores_path = manifest.scores.get("path")
            if not scores_path:
                raise DatasetError(f"{path / MANIFEST_NAME} does not say where its scores are")
            filter_info = manifest.to_dict()
            source = Path(scores_path)
            rule = Rule.from_dict(manifest.rule)
    folder = ScoreFolder.open(source, log=log)
    table = folder.read_score_table()
    selection = None
    if filter_info is not None and rule is not None:
        selection = select_from_table(
            table, rule, keep_unscored=bool(filter_info.get("keep_unscored", True))
        )
    return build_report(
        folder, top=top, by=by, table=table, filter_info=filter_info, selection=selection,
        highlight=highlight, device=device, log=log,
    )


def check_report_targets(targets: Iterable[Path | None], scores: Path | str | None = None) -> None:
    """Raise an OutputError for a report file that could not be written (before any work), or
    that would replace part of the folder the report reads (``scores``: its manifest, lock or
    a file under its ``data/``; and, for a filter output, of the scores folder it names)."""
    folders = []
    if scores is not None:
        folders.append(Path(scores))
        if folder_kind(scores) == "filter":
            with suppress(ChesError):
                manifest = read_manifest(scores)
                if isinstance(manifest, FilterManifest) and manifest.scores.get("path"):
                    folders.append(Path(manifest.scores["path"]))
    for target in targets:
        if target is None:
            continue
        if not Path(target).parent.is_dir():
            raise OutputError(f"cannot write {target}: no folder {Path(target).parent}")
        check_report_file(Path(target), folders)


def write_report(data: dict[str, Any], target: Path | str, fmt_name: str) -> Path:
    """Render ``data`` as ``fmt_name`` (html, markdown, json) into ``target``, atomically."""
    target = Path(target)
    check_report_targets([target])
    atomic_write_bytes(target, render(data, fmt_name).encode("utf-8"))
    return target


# --------------------------------------------------------------------------------------------
# Shared formatting

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def visible_controls(text: str) -> str:
    """Show control and bidi-override characters as ``\\xNN``/``\\uNNNN`` (newline and tab stay)."""
    def sub(m: re.Match[str]) -> str:
        code = ord(m.group())
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _CONTROL.sub(sub, text)


def fmt(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "—"
    if x == 0:
        return "0"
    if abs(x) >= 1e5 or abs(x) < 1e-3:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(visible_controls(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _rule_text(data: dict[str, Any]) -> str | None:
    f = data.get("filter")
    if not f or not f.get("rule"):
        return None
    return str(f["rule"].get("description"))


def _top_tokens(pair: dict[str, Any], score: str, k: int = 5) -> list[tuple[str, float]]:
    contrib = pair.get("contributions")
    if not contrib:
        return []
    toks = sorted(contrib["tokens"], key=lambda t: -t[score])[:k]
    total = sum(abs(t[score]) for t in contrib["tokens"]) or 1.0
    return [(t["text"], t[score] / total) for t in toks if t[score] > 0]


def _why(pair: dict[str, Any], data: dict[str, Any]) -> list[str]:
    """Plain-language reasons, from the numbers only (no dataset text)."""
    by = data["by"]
    s = pair["scores"]
    n = data["counts"]["ranked"]
    below = math.floor(10 * pair["percentile"]) / 10  # 99.96 reads 99.9, never 100.0
    reasons = [f"{by} {fmt(s[by])}: riskier than {below:.1f}% of the other ranked pairs"
               f" (rank {pair['rank']:,} of {n:,})"
               if pair["rank"] > 1 else f"{by} {fmt(s[by])}: the riskiest of the {n:,} ranked pairs"]
    if s.get("edit_distance") is not None:
        reasons.append(
            f"the responses share {100 * (1 - s['edit_distance']):.0f}% of their tokens "
            f"(edit distance {fmt(s['edit_distance'])})"
        )
    toks = pair["tokens"]
    if toks.get("chosen") is not None and toks.get("rejected") is not None:
        reasons.append(f"{toks['chosen']} chosen vs {toks['rejected']} rejected tokens"
                       + (" (truncated)" if pair.get("truncated") else ""))
    return reasons


# --------------------------------------------------------------------------------------------
# Terminal


def render_terminal(data: dict[str, Any], console: Any) -> None:
    """Print a summary and a rich table of the top pairs. No dataset text is parsed as markup."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    prov = data["provenance"]
    inp, model = prov["input"], prov["model"]
    title = Text("CHES report", style="bold")
    title.append(f" · {visible_controls(str(inp.get('dataset') or '?'))}", style="")
    if inp.get("split"):
        title.append(f" ({visible_controls(str(inp['split']))})")
    title.append(f" · model {visible_controls(str(model.get('id') or '?'))}")
    title.append(f" · convention {prov.get('convention') or '?'}")
    console.print(title)
    c = data["counts"]
    console.print(Text(
        f"{c['rows']:,} rows: {c['scored']:,} scored, {c['ranked']:,} ranked by {data['by']}, "
        f"{c['identical']:,} identical, {c['truncated_identical']:,} identical after truncation, "
        f"{c['truncated_scored']:,} scored after truncation"
    ))
    status = Table(box=box.SIMPLE, show_edge=False, title=None)
    status.add_column("status")
    status.add_column("rows", justify="right")
    for name, n in c["by_status"].items():
        status.add_row(Text(name), Text(f"{n:,}"))
    console.print(status)

    scores = Table(box=box.SIMPLE, show_edge=False)
    for col in ("score", "n", "min", "p05", "median", "p95", "max"):
        scores.add_column(col, justify="left" if col == "score" else "right")
    for name, st in data["scores"].items():
        q = st["quantiles"] or {}
        scores.add_row(Text(name), Text(f"{st['n']:,}"),
                       *(Text(fmt(q.get(k))) for k in ("min", "p05", "median", "p95", "max")))
    console.print(scores)
    sp = data["length"]["spearman"]
    console.print(Text(
        f"length: Spearman(ches, n- - n+) = {fmt(sp['ches_vs_length_diff'], 3)}, "
        f"Spearman(ln_ches, n- - n+) = {fmt(sp['ln_ches_vs_length_diff'], 3)}"
    ))
    rule = _rule_text(data)
    if rule:
        fc = data["filter"]["counts"] or {}
        console.print(Text(
            f"filter: {rule}; cutoff {fmt(data['filter'].get('cutoff'))}; kept {fc.get('kept', 0):,}, "
            f"removed {fc.get('removed', 0):,} ({fc.get('removed_by_rule', 0):,} by the rule, "
            f"{fc.get('unscored_dropped', 0):,} unscored dropped, "
            f"{fc.get('unscored_kept', 0):,} unscored kept)"
        ))
    for note in data["notes"]:
        console.print(Text(f"note: {note}", style="yellow"))
    if data["highlight"]["status"] == "skipped":
        console.print(Text(str(data["highlight"]["message"]), style="yellow"))

    by = data["by"]
    top = Table(box=box.SIMPLE_HEAD, title=f"Top {len(data['top'])} pairs by {by}",
                title_justify="left", show_edge=False)
    top.add_column("#", justify="right", no_wrap=True)
    top.add_column("row_id", justify="right", no_wrap=True)
    top.add_column(by, justify="right", no_wrap=True)
    for other in score_registry.TOP_TABLE:
        if other != by:
            top.add_column(other, justify="right", no_wrap=True)
    top.add_column("n+/n-", justify="right", no_wrap=True)
    if any(p["removed"] is not None for p in data["top"]):
        top.add_column("removed", no_wrap=True)
    top.add_column("rejected response (start)", no_wrap=True)
    snippet = max(20, int(console.width) - 75)
    for p in data["top"]:
        s = p["scores"]
        cells = [Text(str(p["rank"])), Text(str(p["row_id"])), Text(fmt(s[by]))]
        cells += [Text(fmt(s[o])) for o in score_registry.TOP_TABLE if o != by]
        cells.append(Text(f"{p['tokens']['chosen']}/{p['tokens']['rejected']}"))
        if p["removed"] is not None:
            cells.append(Text("yes" if p["removed"] else "no"))
        cells.append(Text(_one_line(p["text"]["rejected"], snippet)))
        top.add_row(*cells)
    console.print(top)


def render_terminal_text(data: dict[str, Any], *, width: int = 120) -> str:
    """The terminal view as plain text (for snapshots and for files)."""
    import io

    from rich.console import Console

    console = Console(file=io.StringIO(), width=width, record=True, color_system=None,
                      force_terminal=False, highlight=False, soft_wrap=False)
    render_terminal(data, console)
    return console.export_text()


# --------------------------------------------------------------------------------------------
# Markdown

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()+\-!|~])")


def md_inline(text: str, limit: int | None = None) -> str:
    """Untrusted text as one safe Markdown line: HTML, Markdown specials, pipes, mentions."""
    flat = " ".join(visible_controls(text).split())
    if limit is not None and len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    flat = flat.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    flat = _MD_SPECIAL.sub(r"\\\1", flat)
    return flat.replace("@", "&#64;").replace("#", "&#35;").replace(":", "&#58;")


def md_block(text: str, info: str = "text") -> str:
    """Untrusted text in a fenced block whose fence is longer than any backtick run inside."""
    body = visible_controls(text)
    longest = max((len(m) for m in re.findall(r"`+", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{body}\n{fence}"


def render_markdown(data: dict[str, Any]) -> str:
    prov = data["provenance"]
    inp, model = prov["input"], prov["model"]
    c = data["counts"]
    by = data["by"]
    out = [f"## CHES report: {md_inline(str(inp.get('dataset') or '?'))}", ""]
    out.append(
        f"Model {md_inline(str(model.get('id') or '?'))} · convention "
        f"{md_inline(str(prov.get('convention') or '?'))} · split {md_inline(str(inp.get('split') or '?'))}"
        f" · layout {md_inline(str(inp.get('layout') or '?'))} · spec {md_inline(str(prov.get('spec_version') or '?'))}"
    )
    out += ["", f"**{c['rows']:,} rows**: {c['scored']:,} scored, {c['ranked']:,} ranked by {by}, "
            f"{c['identical']:,} identical, {c['truncated_identical']:,} identical after truncation, "
            f"{c['truncated_scored']:,} scored after truncation.", ""]
    out += ["| status | rows |", "|---|---:|"]
    out += [f"| {md_inline(k)} | {v:,} |" for k, v in c["by_status"].items()]
    out += ["", "| score | n | min | p05 | median | p95 | max |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, st in data["scores"].items():
        q = st["quantiles"] or {}
        vals = " | ".join(fmt(q.get(k)) for k in ("min", "p05", "median", "p95", "max"))
        out.append(f"| {md_inline(name)} | {st['n']:,} | {vals} |")
    sp = data["length"]["spearman"]
    out += ["", f"Length: Spearman(ches, n− − n+) = {fmt(sp['ches_vs_length_diff'], 3)}; "
            f"Spearman(ln_ches, n− − n+) = {fmt(sp['ln_ches_vs_length_diff'], 3)} "
            "(raw CHES grows with response length; ln_ches divides it out)."]
    rule = _rule_text(data)
    if rule:
        fc = data["filter"]["counts"] or {}
        out += ["", f"**Filter**: {md_inline(rule)}; cutoff {fmt(data['filter'].get('cutoff'))}; "
                f"kept {fc.get('kept', 0):,}, removed {fc.get('removed', 0):,} "
                f"({fc.get('removed_by_rule', 0):,} by the rule, {fc.get('unscored_dropped', 0):,} "
                f"unscored dropped, {fc.get('unscored_kept', 0):,} unscored kept)."]
    for note in data["notes"]:
        out += ["", f"> note: {md_inline(note)}"]
    if data["highlight"]["status"] == "skipped":
        out += ["", f"> {md_inline(str(data['highlight']['message']))}"]

    out += ["", f"### Top {len(data['top'])} pairs by {by}", ""]
    if data["top"]:
        others = [o for o in score_registry.TOP_TABLE if o != by]
        removed_col = any(p["removed"] is not None for p in data["top"])
        head = ["#", "row_id", by, *others, "n+/n−"] + (["removed"] if removed_col else []) + ["rejected (start)"]
        out.append("| " + " | ".join(md_inline(h) for h in head) + " |")
        out.append("|" + "---:|" * (len(head) - 1) + "---|")
        for p in data["top"]:
            s = p["scores"]
            cells = [str(p["rank"]), str(p["row_id"]), fmt(s[by]), *(fmt(s[o]) for o in others),
                     f"{p['tokens']['chosen']}/{p['tokens']['rejected']}"]
            if removed_col:
                cells.append("yes" if p["removed"] else "no")
            cells.append(md_inline(p["text"]["rejected"], 60))
            out.append("| " + " | ".join(cells) + " |")
        score = data["highlight"].get("score") or by
        for p in data["top"]:
            out += ["", f"<details><summary>#{p['rank']} · row {p['row_id']} · {by} {fmt(p['scores'][by])}"
                    "</summary>", ""]
            out += [f"- {r}" for r in _why(p, data)]  # numbers and score names only
            toks = _top_tokens(p, score)
            if toks:
                listed = ", ".join(f"“{md_inline(t)}” {share:+.0%}" for t, share in toks)
                out.append(f"- rejected tokens pushing {score} up most: {listed}")
            for part in ("prompt", "chosen", "rejected"):
                out += ["", f"**{part}**", "", md_block(p["text"][part])]
            out += ["", "</details>"]
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------------------------
# JSON


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return _json_safe(float(value))
    return value


def render_json(data: dict[str, Any]) -> str:
    """JSON with ``<``, ``>`` and ``&`` as unicode escapes, so it is safe to embed in HTML too."""
    text = json.dumps(_json_safe(data), indent=2, ensure_ascii=False, allow_nan=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return text + "\n"


# --------------------------------------------------------------------------------------------
# HTML

_CSS = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--bg:#fff;--card:#f6f8fa;--pos:220,38,38;--neg:37,99,235}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
main{max-width:1100px;margin:0 auto;padding:16px}
h1{font-size:1.5rem;margin:.2em 0}h2{font-size:1.2rem;margin:1.6em 0 .5em;border-bottom:1px solid var(--line);padding-bottom:.2em}
.sub{color:var(--muted);margin:0;overflow-wrap:anywhere}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(140px,1fr));gap:8px;margin:12px 0}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:8px 10px}
.card b{display:block;font-size:1.3rem}.card span{color:var(--muted);font-size:.85rem}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:.9rem}th,td{padding:4px 8px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:12px}
figure{margin:0;background:var(--card);border:1px solid var(--line);border-radius:8px;padding:8px}
figcaption{font-size:.85rem;color:var(--muted)}svg{width:100%;height:auto;display:block}
.pair{border:1px solid var(--line);border-radius:10px;margin:14px 0;padding:10px 12px}
.pair header{display:flex;flex-wrap:wrap;gap:6px 14px;align-items:baseline}
.pair header .rank{font-weight:700;font-size:1.15rem}
.badge{font-size:.8rem;border-radius:10px;padding:1px 8px;background:var(--card);border:1px solid var(--line)}
.badge.removed{background:#fee2e2;border-color:#fca5a5}.badge.kept{background:#dcfce7;border-color:#86efac}
.why{margin:6px 0;padding-left:18px;color:var(--muted);font-size:.9rem}
.responses{display:grid;grid-template-columns:1fr 1fr;gap:10px}
.resp{min-width:0}.resp h3{font-size:.95rem;margin:.4em 0}
.text{white-space:pre-wrap;overflow-wrap:anywhere;background:var(--card);border-radius:6px;padding:8px;margin:0;font:13px/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;max-height:28em;overflow-y:auto}
details>summary{cursor:pointer;color:var(--muted);font-size:.9rem}
.tok{border-radius:2px}
.legend{font-size:.85rem;color:var(--muted)}
.legend .tok{padding:0 4px}
.note{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:6px 10px;font-size:.9rem}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;font-size:.9rem}dt{color:var(--muted)}dd{margin:0;overflow-wrap:anywhere}
@media (max-width:700px){.responses{grid-template-columns:1fr}main{padding:10px}body{font-size:14px}}
"""

_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"


def esc(text: Any) -> str:
    return html.escape(visible_controls(str(text)), quote=True)


def _bin_range(hist: dict[str, Any], k: int) -> str:
    """A bin's range as its tooltip says it; the edge bins also hold the tails beyond them."""
    edges, last = hist["edges"], len(hist["counts"]) - 1
    if k == 0 and hist.get("below"):
        return f"≤ {fmt(edges[1])} ({hist['below']:,} below {fmt(edges[0])})"
    if k == last and hist.get("above"):
        return f"≥ {fmt(edges[k])} ({hist['above']:,} above {fmt(edges[k + 1])})"
    return f"{fmt(edges[k])} to {fmt(edges[k + 1])}"


def _svg_histogram(hist: dict[str, Any] | None, *, label: str, marker: float | None = None) -> str:
    if not hist:
        return "<p>no values</p>"
    w, h, pad_l, pad_b, pad_t = 320, 150, 34, 24, 8
    counts, edges = hist["counts"], hist["edges"]
    top = max(counts) or 1
    lo, hi = edges[0], edges[-1]
    span = (hi - lo) or 1.0
    bar_w = (w - pad_l - 4) / len(counts)
    parts = [f'<svg viewBox="0 0 {w} {h}" role="img" aria-label="{esc(label)}">']
    for k, n in enumerate(counts):
        bh = (h - pad_b - pad_t) * n / top
        x = pad_l + k * bar_w
        parts.append(f'<rect x="{x:.1f}" y="{h - pad_b - bh:.1f}" width="{max(bar_w - 1, 0.5):.1f}" '
                     f'height="{bh:.1f}" fill="#6e7781"><title>{esc(_bin_range(hist, k))}: {n}</title></rect>')
    parts.append(f'<line x1="{pad_l}" y1="{h - pad_b}" x2="{w - 4}" y2="{h - pad_b}" stroke="#59636e"/>')
    lo_text = ("≤ " if hist.get("below") else "") + fmt(lo)  # the edge bins hold the tails
    hi_text = ("≥ " if hist.get("above") else "") + fmt(hi)
    parts.append(f'<text x="{pad_l}" y="{h - 8}" font-size="10" fill="#59636e">{esc(lo_text)}</text>')
    parts.append(f'<text x="{w - 4}" y="{h - 8}" font-size="10" fill="#59636e" text-anchor="end">{esc(hi_text)}</text>')
    parts.append(f'<text x="{pad_l - 4}" y="{pad_t + 8}" font-size="10" fill="#59636e" text-anchor="end">{top}</text>')
    if marker is not None and lo <= marker <= hi:
        mx = pad_l + (w - pad_l - 4) * (marker - lo) / span
        parts.append(f'<line x1="{mx:.1f}" y1="{pad_t}" x2="{mx:.1f}" y2="{h - pad_b}" stroke="rgb(220,38,38)" '
                     f'stroke-width="2" stroke-dasharray="4 2"><title>cutoff {esc(fmt(marker))}</title></line>')
    parts.append("</svg>")
    return "".join(parts)


def _svg_scatter(xs: list[float], ys: list[float], *, xlabel: str, ylabel: str) -> str:
    if not xs:
        return "<p>no values</p>"
    w, h, pad_l, pad_b, pad_t, pad_r = 320, 200, 62, 30, 8, 6
    x0, x1 = min(xs), max(xs)
    y0, y1 = (float(v) for v in np.quantile(ys, [0.01, 0.99]))  # the tails sit on the edges
    if not y0 < y1:
        y0, y1 = min(ys), max(ys)
    sx, sy = (x1 - x0) or 1.0, (y1 - y0) or 1.0
    ys = [min(max(y, y0), y1) for y in ys]
    parts = [f'<svg viewBox="0 0 {w} {h}" role="img" aria-label="{esc(ylabel)} against {esc(xlabel)}">']
    parts.append(f'<rect x="{pad_l}" y="{pad_t}" width="{w - pad_l - pad_r}" height="{h - pad_t - pad_b}" '
                 'fill="none" stroke="#d1d9e0"/>')
    for x, y in zip(xs, ys, strict=True):
        cx = pad_l + (w - pad_l - pad_r) * (x - x0) / sx
        cy = h - pad_b - (h - pad_b - pad_t) * (y - y0) / sy
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="1.8" fill="rgba(37,99,235,.45)"/>')
    small = 'font-size="10" fill="#59636e"'
    parts.append(f'<text x="{pad_l}" y="{h - 16}" {small}>{esc(fmt(x0))}</text>')
    parts.append(f'<text x="{w - pad_r}" y="{h - 16}" {small} text-anchor="end">{esc(fmt(x1))}</text>')
    parts.append(f'<text x="{(w + pad_l) / 2:.0f}" y="{h - 3}" {small} text-anchor="middle">{esc(xlabel)}</text>')
    parts.append(f'<text x="{pad_l - 3}" y="{h - pad_b}" {small} text-anchor="end">{esc(fmt(y0))}</text>')
    parts.append(f'<text x="{pad_l - 3}" y="{pad_t + 9}" {small} text-anchor="end">{esc(fmt(y1))}</text>')
    parts.append(f'<text x="10" y="{(h - pad_b + pad_t) / 2:.0f}" {small} text-anchor="middle" '
                 f'transform="rotate(-90 10 {(h - pad_b + pad_t) / 2:.0f})">{esc(ylabel)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _collapsible(label: str, text: str, *, open_below: int, css: str = "text") -> str:
    body = f'<pre class="{css}">{esc(text)}</pre>'
    is_open = " open" if len(text) < open_below else ""
    return (f"<details{is_open}><summary>{esc(label)} · {len(text):,} characters</summary>"
            f"{body}</details>")


def _highlighted(pair: dict[str, Any], score: str) -> str:
    contrib = pair["contributions"]
    tokens = contrib["tokens"]
    peak = max((abs(t[score]) for t in tokens), default=0.0) or 1.0
    total = sum(abs(t[score]) for t in tokens) or 1.0
    spans = []
    for t in tokens:
        value = t[score]
        alpha = min(abs(value) / peak, 1.0) * 0.85
        colour = "var(--pos)" if value > 0 else "var(--neg)"
        spans.append(
            f'<span class="tok" style="background:rgba({colour},{alpha:.2f})" '
            f'title="{esc(f"{value:+.4g} ({value / total:+.1%} of |{score}|)")}">{esc(t["text"])}</span>'
        )
    return f'<pre class="text">{"".join(spans)}</pre>'


def render_html(data: dict[str, Any]) -> str:
    prov = data["provenance"]
    inp, model = prov["input"], prov["model"]
    c = data["counts"]
    by = data["by"]
    dataset = str(inp.get("dataset") or "?")
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="referrer" content="no-referrer">',
        f"<title>CHES report · {esc(dataset)}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        "<header><h1>CHES likelihood-displacement report</h1>",
        f'<p class="sub">{esc(dataset)} · split {esc(inp.get("split") or "?")} · model '
        f'{esc(model.get("id") or "?")} · convention {esc(prov.get("convention") or "?")} · '
        f"ranked by {esc(by)}</p></header>",
    ]
    cards = [("rows", c["rows"]), ("scored", c["scored"]), (f"ranked by {by}", c["ranked"]),
             ("identical", c["identical"]), ("identical after truncation", c["truncated_identical"]),
             ("scored after truncation", c["truncated_scored"])]
    f = data.get("filter")
    if f and f.get("counts"):
        cards += [("kept by filter", f["counts"].get("kept", 0)),
                  ("removed by filter", f["counts"].get("removed", 0))]
    out.append('<section class="cards">' + "".join(
        f'<div class="card"><b>{n:,}</b><span>{esc(label)}</span></div>' for label, n in cards) + "</section>")
    for note in data["notes"]:
        out.append(f'<p class="note">{esc(note)}</p>')
    if data["highlight"]["status"] == "skipped":
        out.append(f'<p class="note">{esc(data["highlight"]["message"])}</p>')
    rule = _rule_text(data)
    if rule:
        fc = f["counts"] or {}
        out.append(f"<h2>Filter</h2><p>{esc(rule)}. Cutoff <b>{esc(fmt(f.get('cutoff')))}</b>; kept "
                   f"{fc.get('kept', 0):,}, removed {fc.get('removed', 0):,} ({fc.get('removed_by_rule', 0):,} "
                   f"by the rule, {fc.get('unscored_dropped', 0):,} unscored dropped, "
                   f"{fc.get('unscored_kept', 0):,} unscored kept).</p>")

    score_for_tokens = data["highlight"].get("score") or by
    out.append(f'<h2 id="top">Top {len(data["top"])} pairs most likely to cause likelihood displacement</h2>')
    if data["highlight"]["status"] == "computed":
        out.append('<p class="legend">Rejected tokens are shaded by their share of '
                   f'{esc(score_for_tokens)}: <span class="tok" style="background:rgba(var(--pos),.6)">'
                   'raises the score</span> <span class="tok" style="background:rgba(var(--neg),.6)">'
                   "lowers it</span>. Hover a token for its exact contribution.</p>")
    for p in data["top"]:
        s = p["scores"]
        badge = ""
        if p["removed"] is not None:
            badge = ('<span class="badge removed">removed</span>' if p["removed"]
                     else '<span class="badge kept">kept</span>')
        out.append(f'<article class="pair" id="pair-{p["rank"]}" data-row-id="{p["row_id"]}">')
        out.append(f'<header><span class="rank">#{p["rank"]}</span><span>row {p["row_id"]}</span>'
                   f'<span><b>{esc(by)} {esc(fmt(s[by]))}</b></span>'
                   + "".join(f"<span>{esc(o)} {esc(fmt(s[o]))}</span>" for o in SCORE_BY if o != by)
                   + f"{badge}</header>")
        why = _why(p, data)
        toks = _top_tokens(p, score_for_tokens)
        if toks:
            why.append(f"rejected tokens pushing {score_for_tokens} up most: "
                       + ", ".join(f"“{t.strip() or t}” ({share:+.0%})" for t, share in toks))
        out.append('<ul class="why">' + "".join(f"<li>{esc(r)}</li>" for r in why) + "</ul>")
        out.append(_collapsible("Prompt", p["text"]["prompt"], open_below=400))
        rejected = (_highlighted(p, score_for_tokens) if p.get("contributions")
                    else f'<pre class="text">{esc(p["text"]["rejected"])}</pre>')
        chosen_open = " open" if len(p["text"]["chosen"]) < 1500 else ""
        out.append(
            '<div class="responses">'
            f'<div class="resp chosen"><details{chosen_open}><summary>Chosen · '
            f'{p["tokens"]["chosen"]} tokens</summary><pre class="text">{esc(p["text"]["chosen"])}</pre>'
            "</details></div>"
            f'<div class="resp rejected"><details open><summary>Rejected · {p["tokens"]["rejected"]} '
            f"tokens</summary>{rejected}</details></div></div>"
        )
        out.append("</article>")

    out.append("<h2>Scores</h2>")
    out.append('<div class="scroll"><table><thead><tr><th>score</th><th>n</th>'
               + "".join(f"<th>{k}</th>" for k in QUANTILES) + "<th>mean</th></tr></thead><tbody>")
    for name, st in data["scores"].items():
        q = st["quantiles"] or {}
        out.append(f"<tr><td>{esc(name)}</td><td>{st['n']:,}</td>"
                   + "".join(f"<td>{esc(fmt(q.get(k)))}</td>" for k in QUANTILES)
                   + f"<td>{esc(fmt(st['mean']))}</td></tr>")
    out.append("</tbody></table></div>")
    cutoff = f.get("cutoff") if f else None
    out.append('<div class="charts">')
    for name, st in data["scores"].items():
        marker = cutoff if f and f.get("by") == name else None
        out.append(f"<figure>{_svg_histogram(st['histogram'], label=name, marker=marker)}"
                   f"<figcaption>{esc(SCORE_LABELS[name])}, scored pairs"
                   + (" · dashed line: filter cutoff" if marker is not None else "")
                   + "</figcaption></figure>")
    out.append("</div>")
    length = data["length"]
    sp = length["spearman"]
    out.append("<h2>Length</h2><p>Raw CHES sums over tokens, so it tracks response length; ln_ches "
               f"divides by the lengths. Spearman with the length difference (n− − n+): ches "
               f"<b>{esc(fmt(sp['ches_vs_length_diff'], 3))}</b>, ln_ches <b>{esc(fmt(sp['ln_ches_vs_length_diff'], 3))}"
               f"</b>; with the total length: ches {esc(fmt(sp['ches_vs_total_length'], 3))}, ln_ches "
               f"{esc(fmt(sp['ln_ches_vs_total_length'], 3))}.</p>")
    sample = length["sample"]
    out.append('<div class="charts">')
    for name in ("ln_ches", "ches"):
        out.append(f"<figure>{_svg_scatter(sample['length_diff'], sample[name], xlabel='n− − n+ (tokens)', ylabel=name)}"
                   f"<figcaption>{esc(name)} against the length difference ({len(sample[name]):,} "
                   "pairs shown; y axis from the 1st to the 99th percentile, pairs beyond it on its edges)"
                   "</figcaption></figure>")
    out.append("</div>")

    out.append("<h2>Status of every row</h2><div class=\"scroll\"><table><thead><tr><th>status</th>"
               "<th>rows</th></tr></thead><tbody>")
    out += [f"<tr><td>{esc(k)}</td><td>{v:,}</td></tr>" for k, v in c["by_status"].items()]
    out.append("</tbody></table></div>")

    out.append("<h2>Provenance</h2><dl>")
    tool = prov.get("tool") or {}
    items = [
        ("tool", f"{tool.get('name', '?')} {tool.get('version', '')}"),
        ("spec version", prov.get("spec_version")), ("convention", prov.get("convention")),
        ("command", prov.get("command")), ("scored at", prov.get("created_at")),
        ("model", model.get("id")), ("revision", model.get("revision")),
        ("dtype / device", f"{model.get('dtype')} / {model.get('device')}"),
        ("chat template", model.get("chat_template")),
        ("tokenizer fingerprint", model.get("tokenizer_fingerprint")),
        ("dataset", inp.get("dataset")), ("split", inp.get("split")),
        ("dataset fingerprint", inp.get("fingerprint")),
        ("layout", f"{inp.get('layout')}: {inp.get('layout_description')}"),
        ("scores fingerprint", prov.get("scores_fingerprint")),
        ("options", json.dumps(prov.get("options"), sort_keys=True, default=str)),
    ]
    out += [f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items]
    out.append("</dl></main></body></html>")
    return "\n".join(out) + "\n"


def render(data: dict[str, Any], fmt_name: str) -> str:
    """Render ``data`` as ``terminal`` (plain text), ``markdown``, ``json`` or ``html``."""
    if fmt_name == "terminal":
        return render_terminal_text(data)
    if fmt_name == "markdown":
        return render_markdown(data)
    if fmt_name == "json":
        return render_json(data)
    if fmt_name == "html":
        return render_html(data)
    raise ValueError(f"unknown report format {fmt_name!r}")
