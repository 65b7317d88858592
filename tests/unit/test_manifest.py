"""The typed manifest: round trip, old folders, the environment and the weights fingerprint."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

import pyarrow
import pytest

from ches_filter.data.manifest import (
    SCHEMA_VERSION,
    FilterManifest,
    ScoreManifest,
    environment,
    read_manifest,
    write_manifest,
)
from ches_filter.errors import DatasetError
from ches_filter.model import fingerprint
from ches_filter.model.fingerprint import folder_fingerprint, weights_fingerprint
from ches_filter.model.load import ResolvedModel

#: A manifest exactly as ches-filter wrote it before ``schema_version`` existed (trimmed values).
OLD_SCORE_MANIFEST = {
    "kind": "scores",
    "spec_version": "1",
    "convention": "default",
    "tool": {"name": "ches-filter", "version": "0.1.0"},
    "command": ["ches score pairs.jsonl -o out"],
    "created_at": "2026-11-30T10:00:00+00:00",
    "model": {"id": "smollm2-135m-instruct", "kind": "bundled", "dtype": "float32"},
    "input": {"dataset": "pairs.jsonl", "layout": "standard", "columns": ["prompt", "chosen", "rejected"]},
    "options": {"max_length": None, "convention": "default"},
    "counts": {"read": 3, "scored": 3, "unscored": 0, "truncated": 0, "by_status": {"ok": 3}},
    "engine": {"mode": "packed"},
    "timing": {"total_s": 1.5},
    "shards": ["data/train-00000-of-00001.parquet"],
    "schema": {"prompt": "string"},
}


def test_a_score_manifest_round_trips(tmp_path: Path) -> None:
    written = ScoreManifest(
        spec_version="1", convention="official", command=["ches", "score", "x"],
        environment=environment(), model={"id": "m", "weights_fingerprint": {"sha256": "ab"}},
        input={"columns": ["a"]}, counts={"read": 1}, shards=["data/train-00000-of-00001.parquet"],
    )
    write_manifest(tmp_path, written)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    assert raw["kind"] == "scores" and raw["schema_version"] == SCHEMA_VERSION == 1
    assert read_manifest(tmp_path) == written
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temp file, renamed


def test_a_filter_manifest_round_trips_with_both_kinds(tmp_path: Path) -> None:
    written = FilterManifest(kind="filter-removed", command="ches filter s -o o --top-k 1",
                             rule={"kind": "top_k", "value": 1}, by="ln_ches", cutoff=0.5,
                             counts={"kept": 2}, removed={"path": "/r", "shards": []})
    write_manifest(tmp_path, written)
    back = read_manifest(tmp_path)
    assert isinstance(back, FilterManifest) and back == written


def test_an_old_manifest_still_reads_and_keeps_unknown_keys(tmp_path: Path) -> None:
    old = dict(OLD_SCORE_MANIFEST, future_key={"x": 1})
    (tmp_path / "manifest.json").write_text(json.dumps(old))
    manifest = read_manifest(tmp_path)
    assert isinstance(manifest, ScoreManifest)
    assert manifest.schema_version == 0 and manifest.environment is None
    assert manifest.model["id"] == "smollm2-135m-instruct" and manifest.counts["read"] == 3
    assert manifest.extra == {"future_key": {"x": 1}}
    # written back, every key the old file had is still there with its value
    write_manifest(tmp_path, manifest)
    again = json.loads((tmp_path / "manifest.json").read_text())
    assert {k: again[k] for k in old} == old


def test_an_old_filter_manifest_without_kind_reads_as_a_filter(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"rule": {"kind": "top_k"}, "by": "ches"}))
    manifest = read_manifest(tmp_path)
    assert isinstance(manifest, FilterManifest) and manifest.by == "ches"


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ('{"kind": "scores", "schema_version": 99}', "schema_version 99"),
        ('{"kind": "gate"}', "unknown kind 'gate'"),
        ("[1, 2]", "not a JSON object"),
        ("{not json", "cannot read"),
    ],
)
def test_unreadable_manifests_say_why(tmp_path: Path, content: str, words: str) -> None:
    (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(DatasetError, match=words):
        read_manifest(tmp_path)


def test_environment_records_versions_and_the_device() -> None:
    env = environment()
    assert env["python"] == platform.python_version()
    assert env["packages"]["pyarrow"] == pyarrow.__version__
    assert set(env["packages"]) >= {"torch", "transformers", "datasets", "pyarrow"}
    assert env["device"] == "cpu" and env["device_name"]


# -- the weights fingerprint --------------------------------------------------------------------


def _independent(folder: Path, names: list[str]) -> str:
    lines = []
    for name in sorted(names):
        data = (folder / name).read_bytes()
        lines.append(f"{name} {len(data)} {hashlib.sha256(data).hexdigest()}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CHES_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_fingerprint_of_a_folder_changes_with_a_weight_byte(tmp_path: Path, cache_dir: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model-00001-of-00002.safetensors").write_bytes(b"a" * 1000)
    (model / "model-00002-of-00002.safetensors").write_bytes(b"b" * 1000)
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    first = weights_fingerprint(ResolvedModel(model_id=str(model), kind="local", local_path=model))
    assert first["sha256"] == _independent(model, names) and first["files"] == 2

    shard = model / names[1]
    shard.write_bytes(b"b" * 999 + b"c")  # same size, one byte changed
    stat = shard.stat()
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # a later mtime
    second = folder_fingerprint(model)
    assert second["sha256"] == _independent(model, names) != first["sha256"]
    (model / "config.json").write_text('{"changed": true}')  # not a weight file
    assert folder_fingerprint(model)["sha256"] == second["sha256"]


def test_file_hashes_are_cached_by_path_size_and_mtime(tmp_path: Path, cache_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"x" * 4096)
    first = folder_fingerprint(model)
    assert (cache_dir / fingerprint.HASH_CACHE_NAME).is_file()

    def no_hashing(path: Path) -> str:
        raise AssertionError(f"{path} was hashed again")

    monkeypatch.setattr(fingerprint, "_hash_file", no_hashing)
    assert folder_fingerprint(model) == first  # from the cache
    stat = (model / "model.safetensors").stat()
    os.utime(model / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="hashed again"):
        folder_fingerprint(model)


def test_a_gguf_fingerprint_is_the_file_digest(tmp_path: Path, cache_dir: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(os.urandom(3000))
    found = weights_fingerprint(ResolvedModel(model_id="m", kind="gguf", gguf_path=gguf))
    assert found["sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()


def test_a_scoring_run_records_environment_and_weights(tiny_llama_dir: Path, tmp_path: Path) -> None:
    import torch

    from ches_filter.pipeline import score_dataset

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "Hi", "chosen": "Hello.", "rejected": "Go."}) + "\n")
    score_dataset(pairs, output=tmp_path / "out", model=str(tiny_llama_dir), device="cpu",
                  dtype="float32")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert manifest["environment"]["packages"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    weights = manifest["model"]["weights_fingerprint"]
    names = [p.name for p in tiny_llama_dir.glob("*.safetensors")]
    assert names and weights["sha256"] == _independent(tiny_llama_dir, names)
