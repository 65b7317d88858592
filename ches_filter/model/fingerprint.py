"""A fingerprint of a model's weights: what a score cache can key on.

The fingerprint is SHA-256 over one line per weight file (``name size sha256-of-content``,
sorted by name): a changed byte in any weight file, a renamed, added or removed shard all change
it. For a GGUF checkpoint (the bundled models, a user's ``.gguf``) it is the GGUF file's own
SHA-256, the digest :mod:`ches_filter.model.load` keys its safetensors conversion on.

Hashing a 16 GB checkpoint takes a minute, so each file's content hash is cached in
``$CHES_CACHE_DIR/file-hashes.json``, keyed by the file's resolved path, size and modification
time (nanoseconds): a file that is rewritten gets a new mtime and is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ches_filter.model.load import ResolvedModel, cache_root

HASH_CACHE_NAME = "file-hashes.json"
#: Weight files, most specific first: the first pattern that matches any file is used.
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf")


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_cache(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent or damaged: start over (it is only a cache)
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(
        data, dict
    ) else {}


def _save_cache(path: Path, entries: dict[str, str]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries, indent=0, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:  # a read-only cache folder costs a rehash next time, nothing else
        pass


def file_sha256(path: Path, *, cache: dict[str, str] | None = None) -> str:
    """SHA-256 of a file's content, looked up in ``cache`` by path, size and mtime first."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    key = f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}"
    if cache is not None and key in cache:
        return cache[key]
    value = _hash_file(resolved)
    if cache is not None:
        cache[key] = value
    return value


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a model folder (safetensors if it has any, else .bin, …)."""
    for pattern in WEIGHT_PATTERNS:
        found = sorted(p for p in Path(folder).glob(pattern) if p.is_file())
        if found:
            return found
    return []


def folder_fingerprint(folder: Path) -> dict[str, Any]:
    """``{"method", "sha256", "files"}`` over the weight files of ``folder`` (content hashed)."""
    files = weight_files(folder)
    if not files:
        return {"method": None, "sha256": None, "files": 0, "note": f"no weight files in {folder}"}
    cache_path = cache_root() / HASH_CACHE_NAME
    cache = _load_cache(cache_path)
    before = dict(cache)
    lines = [f"{p.name} {p.stat().st_size} {file_sha256(p, cache=cache)}" for p in files]
    if cache != before:
        _save_cache(cache_path, cache)
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    return {"method": "sha256 of name, size, sha256 per weight file", "sha256": digest, "files": len(files)}


def _hub_folder(repo_id: str, revision: str | None) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a dependency of transformers
        return None
    found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return Path(found).parent if isinstance(found, str) else None


def weights_fingerprint(resolved: ResolvedModel, *, revision: str | None = None) -> dict[str, Any]:
    """The fingerprint of the weights ``resolved`` names (call after the model has loaded, so a
    bundled model's GGUF file and a hub model's cached snapshot exist)."""
    if resolved.gguf_path is not None:
        cache_path = cache_root() / HASH_CACHE_NAME
        cache = _load_cache(cache_path)
        before = dict(cache)
        digest = file_sha256(resolved.gguf_path, cache=cache)
        if cache != before:
            _save_cache(cache_path, cache)
        return {"method": "sha256 of the GGUF file", "sha256": digest, "files": 1}
    if resolved.local_path is not None:
        return folder_fingerprint(resolved.local_path)
    folder = _hub_folder(resolved.model_id, revision)
    if folder is None:
        return {"method": None, "sha256": None, "files": 0,
                "note": f"{resolved.model_id} is not in the local Hugging Face cache"}
    return folder_fingerprint(folder)
