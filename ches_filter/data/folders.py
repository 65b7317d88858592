"""What ches's output folders are, and the rules that keep them apart from their inputs.

- :func:`check_apart`: an output folder is never the input, never inside it and never holds it
  (symlinks resolved), so ``--overwrite`` can't delete the input and a later run never reads an
  output as data.
- :func:`folder_kind`: recognise a folder ches wrote (a manifest of ours, a lock, or the temp
  files of an interrupted run), so that every command can say what it is.
- :func:`shard_entry` / :func:`verify_shards`: each shard a manifest lists, with its row count,
  byte size and SHA-256; a reader checks them and names the missing or damaged file.
- :func:`remove_temp_files`: the ``.tmp`` files of runs that died.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ches_filter import score_registry
from ches_filter.data.lock import LOCK_NAME
from ches_filter.errors import DatasetError, OutputError

MANIFEST_NAME = "manifest.json"
DATA_DIR = "data"
OUR_KINDS = ("scores", "filter", "filter-removed")
#: Temp files: shards ``.train-00000.<token>.parquet.tmp``, others ``.<name>.<token>.tmp``.
TEMP_RE = re.compile(r"^\..+\.tmp$")
_HASH_BLOCK = 1 << 20

Log = Callable[[str], None]


# -- inputs and outputs apart ---------------------------------------------------------------------


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_apart(outputs: Mapping[str, Path | None], inputs: Mapping[str, Path | None]) -> None:
    """Raise an OutputError when an output is, contains or lies inside an input, or two outputs
    overlap. Keys are what the user called them (``--output``, ``the input``); paths are
    compared with symlinks resolved."""
    outs = [(name, Path(p).resolve()) for name, p in outputs.items() if p is not None]
    ins = [(name, Path(p).resolve()) for name, p in inputs.items() if p is not None]
    for out_name, out in outs:
        for in_name, src in ins:
            if out == src:
                why = f"is {in_name}"
            elif _inside(out, src):
                why = f"lies inside {in_name} ({src})"
            elif _inside(src, out):
                why = f"contains {in_name} ({src})"
            else:
                continue
            raise OutputError(
                f"{out_name} {out} {why}: writing there could delete or mix with the input",
                hint="choose an output folder outside the input",
            )
    for i, (a_name, a) in enumerate(outs):
        for b_name, b in outs[i + 1 :]:
            if _inside(a, b) or _inside(b, a):
                raise OutputError(
                    f"{a_name} {a} and {b_name} {b} overlap", hint="give each a folder of its own"
                )


def input_paths(dataset: str, source: Any) -> list[Path]:
    """The paths on disk a ``ches score`` input reads: the path given (a file or folder) and
    each data file (a glob's matches, a cached hub dataset's files)."""
    paths = [Path(p) for p in getattr(source, "files", ()) or ()]
    given = Path(os.path.expanduser(dataset))
    if given.exists():
        paths.insert(0, given)
    return paths


def check_not_input(outputs: Mapping[str, Path | None], paths: Sequence[Path]) -> None:
    """:func:`check_apart` against every path of an input (see :func:`input_paths`)."""
    check_apart(outputs, {("the input" if i == 0 else f"the input file {p.name}"): p
                          for i, p in enumerate(paths)})


def check_report_file(target: Path, folders: Iterable[Path]) -> None:
    """A report file may sit beside a score folder's manifest (``OUT/report.html``), but never
    replace its manifest or lock, nor go inside its ``data/``."""
    where = Path(target).resolve()
    for folder in folders:
        folder = Path(folder).resolve()
        protected = [folder, folder / MANIFEST_NAME, folder / LOCK_NAME]
        if where in protected or _inside(where, folder / DATA_DIR):
            raise OutputError(
                f"cannot write {target}: it would replace part of the scores folder {folder}",
                hint="write the report beside the manifest or elsewhere",
            )


# -- recognising our own folders ------------------------------------------------------------------


def manifest_kind(folder: Path) -> str | None:
    """The ``kind`` of ``folder/manifest.json`` when ches wrote it, else None (absent, foreign)."""
    path = Path(folder) / MANIFEST_NAME
    try:
        if path.stat().st_size > 64 << 20:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    kind = data.get("kind")
    if kind is None and isinstance(data.get("counts"), dict) and "shards" in data:
        kind = "filter" if "rule" in data else "scores"  # manifests from before ``kind``
    return kind if kind in OUR_KINDS else None


def temp_files(folder: Path) -> list[Path]:
    """Temp files a ches run writes in ``folder`` and ``folder/data``."""
    found = []
    for where in (Path(folder), Path(folder) / DATA_DIR):
        try:
            found += [p for p in where.iterdir() if TEMP_RE.match(p.name) and p.is_file()]
        except OSError:
            continue
    return sorted(found)


def folder_kind(folder: Path | str) -> str | None:
    """``scores``, ``filter``, ``filter-removed`` (a manifest of ours), ``interrupted`` (no
    manifest, but a ches run's lock or temp files, an empty ``data/``, or shards with the score
    columns), or None (not a folder ches wrote)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    kind = manifest_kind(folder)
    if kind is not None:
        return kind
    if (folder / MANIFEST_NAME).exists():
        return None  # someone else's manifest.json
    if (folder / LOCK_NAME).exists() or temp_files(folder):
        return "interrupted"
    data = folder / DATA_DIR
    if data.is_dir():
        try:
            if not any(data.iterdir()):
                return "interrupted"  # a run that died before its first shard
            shards = sorted(data.glob("*-of-*.parquet"))
            if shards and set(score_registry.BY_NAME) <= set(pq.read_schema(shards[0]).names):
                return "interrupted"  # score shards, but the manifest never came
        except (OSError, ValueError):
            return None
    return None


def interrupted_error(folder: Path, *, what: str) -> DatasetError:
    shards = sorted((folder / DATA_DIR).glob("*-of-*.parquet"))
    found = f"{len(shards)} shard(s) but no {MANIFEST_NAME}" if shards else f"no {MANIFEST_NAME}"
    return DatasetError(
        f"{folder} is an interrupted `ches score` output ({found}): {what}",
        hint=f"rerun the `ches score` that wrote it, with --output {folder} --overwrite",
    )


# -- shards as a manifest lists them ---------------------------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def shard_entry(path: Path, root: Path, *, rows: int, sha256: str | None = None) -> dict[str, Any]:
    """What a manifest records of one shard: its path under ``root``, rows, bytes, SHA-256."""
    return {
        "path": path.relative_to(root).as_posix(),
        "rows": rows,
        "bytes": path.stat().st_size,
        "sha256": sha256 if sha256 is not None else sha256_of(path),
    }


def verify_shards(
    folder: Path, entries: Sequence[Any], *, checksum: bool = True, log: Log | None = None
) -> list[Path]:
    """The shards ``entries`` (a manifest's ``shards``) lists, checked; raise a DatasetError
    naming the first missing or damaged one, or a shard on disk that the manifest lacks.

    Entries with ``rows``/``bytes``/``sha256`` are checked for each: the size catches a
    truncated file, the footer's row count a swapped one, the checksum any other change (when
    ``checksum``). Plain path strings (manifests from before these fields) are checked for
    presence only, with a note.
    """
    folder = Path(folder)
    manifest = folder / MANIFEST_NAME
    paths: list[Path] = []
    legacy = False
    for entry in entries:
        if isinstance(entry, str):
            legacy = True
            entry = {"path": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise DatasetError(f"{manifest}: a shard entry is not a path: {str(entry)[:80]}")
        path = folder / entry["path"]
        paths.append(path)
        if not path.is_file():
            missing = sum(not (folder / (e if isinstance(e, str) else e.get("path", ""))).is_file()
                          for e in entries if isinstance(e, str | dict))
            more = f" (and {missing - 1} more)" if missing > 1 else ""
            raise DatasetError(
                f"{path} is missing{more}: {manifest} lists it",
                hint="copy the whole folder again, or rerun the command that wrote it",
            )
        size = path.stat().st_size
        if isinstance(entry.get("bytes"), int) and size != entry["bytes"]:
            raise DatasetError(
                f"{path} is damaged: {size:,} bytes, but {manifest} says {entry['bytes']:,} "
                "(truncated or replaced)",
                hint="copy the whole folder again, or rerun the command that wrote it",
            )
        if isinstance(entry.get("rows"), int):
            try:
                rows = pq.read_metadata(path).num_rows
            except (OSError, ValueError) as exc:  # ArrowInvalid is a ValueError
                raise DatasetError(f"{path} is damaged: not a readable Parquet file ({exc})") from None
            if rows != entry["rows"]:
                raise DatasetError(
                    f"{path} is damaged: {rows:,} rows, but {manifest} says {entry['rows']:,} "
                    "(replaced by another shard?)",
                    hint="copy the whole folder again, or rerun the command that wrote it",
                )
        if checksum and isinstance(entry.get("sha256"), str) and sha256_of(path) != entry["sha256"]:
            raise DatasetError(
                f"{path} is damaged: its SHA-256 differs from the one {manifest} records",
                hint="copy the whole folder again, or rerun the command that wrote it",
            )
    listed = {p.resolve() for p in paths}
    extra = [p for p in sorted((folder / DATA_DIR).glob("*.parquet")) if p.resolve() not in listed]
    if extra:
        raise DatasetError(
            f"{extra[0]} is not listed in {manifest}"
            + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
            + ": a leftover of another run, or the manifest of another folder",
            hint="remove the stray file(s), or rerun the command that wrote the folder",
        )
    if legacy and log is not None:
        log(f"note: {manifest} predates shard checksums; only the shards' presence was checked")
    return paths


def remove_temp_files(folder: Path) -> list[Path]:
    """Remove the ``.tmp`` files of earlier runs in ``folder`` and ``folder/data``. Only under
    the folder's lock: another live run's temp files are then impossible."""
    removed = []
    for path in temp_files(folder):
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise OutputError(f"cannot remove the stale temp file {path}: {exc.strerror}") from None
    return removed
