"""Hub ids offline: datasets and models named ``org/name`` are read from the local Hugging Face
cache, through the same code as a user's ``ches score org/name --model org/model``.

The cache is built in a temporary folder exactly as ``huggingface_hub`` lays it out: per repo a
``blobs/`` folder (files named by their git blob sha1, or by sha256 for LFS files such as
Parquet and safetensors), ``snapshots/<commit>/<path>`` relative symlinks to the blobs, and
``refs/<branch>`` files holding a commit sha. The dataset declares two configs in its README's
YAML front matter (``configs:`` with ``data_files`` per split), as hub datasets do.

``huggingface_hub`` reads its cache folder from the environment once, at import; it reads the
module constant ``huggingface_hub.constants.HF_HUB_CACHE`` at each call, so in-process tests
point that constant (and the environment, for subprocesses) at the temporary cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import ches_filter.pipeline as pipeline
from ches_filter.cli.app import app
from ches_filter.data.sources import SourceSpec, open_source
from ches_filter.errors import DatasetError, ModelError, OptionError
from ches_filter.model.load import ModelSpec, load_model, resolve_model

COMMIT_1 = hashlib.sha1(b"first commit").hexdigest()
COMMIT_2 = hashlib.sha1(b"second commit").hexdigest()
MODEL_COMMIT = hashlib.sha1(b"model commit").hexdigest()
LFS_SUFFIXES = (".parquet", ".safetensors", ".arrow")

README = """---
license: mit
configs:
- config_name: pairs
  default: true
  data_files:
  - split: train
    path: pairs/train.jsonl
  - split: test
    path: pairs/test.jsonl
- config_name: other
  data_files:
  - split: train
    path: other/train-*.parquet
  - split: test
    path: other/test-00000-of-00001.parquet
---
# A tiny preference dataset
"""


def rows(tag: str, n: int) -> list[dict]:
    return [
        {"prompt": f"{tag} question {i}?", "chosen": f"A good answer {i}.", "rejected": f"No {i}."}
        for i in range(n)
    ]


def jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def parquet(records: list[dict]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records), buffer)
    return buffer.getvalue()


def cache_repo(cache: Path, kind: str, repo_id: str, files: dict[str, bytes], commit: str,
               refs: tuple[str, ...] = ()) -> Path:  # fmt: skip
    """Write one commit of a repo into a hub cache the way ``hf_hub_download`` does."""
    root = cache / f"{kind}s--{repo_id.replace('/', '--')}"
    for name, data in files.items():
        if name.endswith(LFS_SUFFIXES):
            blob_name = hashlib.sha256(data).hexdigest()
        else:
            blob_name = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        blob = root / "blobs" / blob_name
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = root / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    return root / "snapshots" / commit


DATASET_FILES = {
    ".gitattributes": b"*.parquet filter=lfs diff=lfs merge=lfs -text\n",
    "README.md": README.encode(),
    "pairs/train.jsonl": jsonl(rows("pairs-train", 3)),
    "pairs/test.jsonl": jsonl(rows("pairs-test", 2)),
    "other/train-00000-of-00002.parquet": parquet(rows("other-train-a", 2)),
    "other/train-00001-of-00002.parquet": parquet(rows("other-train-b", 2)),
    "other/test-00000-of-00001.parquet": parquet(rows("other-test", 5)),
}
# Branch v2 changes one file of the pairs config.
DATASET_FILES_V2 = {**DATASET_FILES, "pairs/test.jsonl": jsonl(rows("pairs-test-v2", 4))}
# A repo without YAML configs: splits come from the file names, as on the hub.
PLAIN_FILES = {
    "README.md": b"# no front matter\n",
    "data/train-00000-of-00001.jsonl": jsonl(rows("plain-train", 2)),
    "data/test-00000-of-00001.jsonl": jsonl(rows("plain-test", 3)),
}


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch) -> Path:
    """A temporary ``HF_HOME`` with the test datasets cached; offline, as every test runs."""
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE, "tests run with HF_HUB_OFFLINE=1 (tests/conftest.py)"
    home = tmp_path / "hf"
    cache = home / "hub"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(home / "datasets"))
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    cache_repo(cache, "dataset", "org/name", DATASET_FILES, COMMIT_1, refs=("main",))
    cache_repo(cache, "dataset", "org/name", DATASET_FILES_V2, COMMIT_2, refs=("v2",))
    cache_repo(cache, "dataset", "org/plain", PLAIN_FILES, COMMIT_1, refs=("main",))
    return cache


@pytest.fixture
def hub_model(hub_cache: Path, tiny_llama_dir: Path) -> str:
    """The tiny random Llama of conftest, cached as hub model ``org/tiny`` (branch main)."""
    files = {p.name: p.read_bytes() for p in sorted(tiny_llama_dir.iterdir()) if p.is_file()}
    assert "config.json" in files and "model.safetensors" in files
    cache_repo(hub_cache, "model", "org/tiny", files, MODEL_COMMIT, refs=("main",))
    return "org/tiny"


def read(**spec) -> tuple[str, list[tuple[int, dict]]]:
    source = open_source(SourceSpec("org/name", **spec))
    return source.description, list(source)


def numbered(records: list[dict]) -> list[tuple[int, dict]]:
    return list(enumerate(records))


# -- datasets ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "split", "expected"),
    [
        ("pairs", "train", rows("pairs-train", 3)),
        ("pairs", "test", rows("pairs-test", 2)),
        ("other", "train", rows("other-train-a", 2) + rows("other-train-b", 2)),  # two shards
        ("other", "test", rows("other-test", 5)),
        (None, None, rows("pairs-train", 3)),  # the default config, split train
        (None, "test", rows("pairs-test", 2)),
    ],
)
def test_cached_dataset_configs_and_splits(hub_cache, config, split, expected):
    description, got = read(config=config, split=split)
    assert got == numbered(expected)
    assert description.startswith("hub dataset org/name (cached ")
    assert f"split {split or 'train'}" in description


@pytest.mark.parametrize(
    ("revision", "expected"),
    [
        ("v2", rows("pairs-test-v2", 4)),  # a branch: refs/v2
        (COMMIT_1, rows("pairs-test", 2)),  # a commit sha: snapshots/<sha>
        (COMMIT_2, rows("pairs-test-v2", 4)),
        ("main", rows("pairs-test", 2)),
    ],
)
def test_cached_dataset_revision(hub_cache, revision, expected):
    description, got = read(config="pairs", split="test", revision=revision)
    assert got == numbered(expected)
    assert f"revision {revision}" in description


def test_cached_dataset_without_configs_splits_by_file_name(hub_cache):
    for split, tag, n in (("train", "plain-train", 2), ("test", "plain-test", 3)):
        source = open_source(SourceSpec("org/plain", split=split))
        assert list(source) == numbered(rows(tag, n))
    assert list(open_source(SourceSpec("org/plain"))) == numbered(rows("plain-train", 2))


def test_cached_dataset_fingerprint_follows_the_content(hub_cache):
    main = open_source(SourceSpec("org/name", config="pairs", split="test")).fingerprint()
    v2 = open_source(SourceSpec("org/name", config="pairs", split="test", revision="v2"))
    sha = open_source(SourceSpec("org/name", config="pairs", split="test", revision=COMMIT_1))
    assert main != v2.fingerprint()  # different files
    assert sha.fingerprint() == main  # the same commit, named two ways


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (SourceSpec("org/missing", split="train"),
         ["'org/missing' is not a local path and could not be reached offline: it is not in the local Hugging Face cache"]),
        (SourceSpec("org/name", config="nope"),
         ["hub dataset org/name has no config 'nope'", "configs: other, pairs"]),
        (SourceSpec("org/name", config="pairs", split="validation"),
         ["has no split 'validation'", "splits found: test, train"]),
        (SourceSpec("org/name", revision="v3"),
         ["revision 'v3' of 'org/name' is not in the local Hugging Face cache", "cached: main, v2"]),
        (SourceSpec("org/plain", config="pairs"),
         ["hub dataset org/plain has no config 'pairs'", "declares no configs"]),
    ],
)  # fmt: skip
def test_cached_dataset_errors(hub_cache, spec, words):
    with pytest.raises(DatasetError) as caught:
        open_source(spec)
    message = str(caught.value)
    for word in words:
        assert word in message, (word, message)
    assert len(str(caught.value).splitlines()) <= 2  # the message and its hint


def test_cached_dataset_missing_file_is_named(hub_cache):
    """A snapshot that lacks a file its config needs (an interrupted download) says which."""
    snapshot = hub_cache / "datasets--org--name" / "snapshots" / COMMIT_1
    os.unlink(snapshot / "other" / "test-00000-of-00001.parquet")
    with pytest.raises(DatasetError, match=r"other/test-00000-of-00001\.parquet.*not in the cached"):
        open_source(SourceSpec("org/name", config="other", split="test"))


# -- models --------------------------------------------------------------------------------


def test_cached_model_resolves_to_its_snapshot(hub_model):
    resolved = resolve_model(ModelSpec(name=hub_model))
    assert resolved.kind == "hub" and resolved.model_id == hub_model
    assert resolved.local_path is not None and resolved.local_path.name == MODEL_COMMIT
    by_sha = resolve_model(ModelSpec(name=hub_model, revision=MODEL_COMMIT))
    assert by_sha.local_path == resolved.local_path


def test_cached_model_loads_the_cached_weights(hub_model, tiny_llama_dir):
    import torch

    from_hub = load_model(ModelSpec(name=hub_model, device="cpu", dtype="float32"))
    local = load_model(ModelSpec(name=str(tiny_llama_dir), device="cpu", dtype="float32"))
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.inference_mode():
        got = from_hub.model(input_ids=ids).last_hidden_state
        want = local.model(input_ids=ids).last_hidden_state
    assert torch.equal(got, want)  # the same file's weights, the same code: bit for bit
    assert from_hub.tokenizer("a test").input_ids == local.tokenizer("a test").input_ids


@pytest.mark.parametrize(
    ("spec", "error", "words"),
    [
        (ModelSpec(name="org/absent"), ModelError,
         ["model 'org/absent' is not in the local Hugging Face cache", "HF_HUB_OFFLINE"]),
        (ModelSpec(name="org/tiny", revision="v9"), ModelError,
         ["revision 'v9' of model 'org/tiny' is not in the local Hugging Face cache", "cached: main"]),
    ],
)  # fmt: skip
def test_cached_model_errors(hub_model, spec, error, words):
    with pytest.raises(error) as caught:
        resolve_model(spec)
    for word in words:
        assert word in str(caught.value), (word, str(caught.value))


def test_model_revision_of_a_local_model_is_an_option_error(tiny_llama_dir):
    with pytest.raises(OptionError, match="--model-revision applies to hub models only"):
        resolve_model(ModelSpec(name=str(tiny_llama_dir), revision="main"))


# -- the command ---------------------------------------------------------------------------


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded for bad input")

    monkeypatch.setattr(pipeline, "load_model", refuse)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["org/missing", "--split", "train"], ["'org/missing'", "not in the local Hugging Face cache"]),
        (["org/name", "--config", "nope"], ["has no config 'nope'", "--config"]),
        (["org/name", "--split", "dev"], ["has no split 'dev'", "--split"]),
        (["org/name", "--revision", "v3"], ["revision 'v3' of 'org/name'", "--revision"]),
        (["org/name", "--model", "org/absent"], ["model 'org/absent' is not in the local"]),
        (["org/name", "--model", "org/tiny", "--model-revision", "v9"], ["revision 'v9' of model"]),
    ],
)  # fmt: skip
def test_cli_errors_for_hub_ids(hub_model, no_model_load, tmp_path, args, words):
    result = CliRunner().invoke(app, ["score", *args, "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == "" and result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)
    assert not (tmp_path / "out").exists()


def test_ches_score_hub_dataset_and_hub_model_offline(hub_model, tiny_llama_dir, tmp_path):
    """The installed command in a fresh process, its hub cache set by the environment only."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    env.pop("HF_HUB_CACHE", None)  # from HF_HOME: $HF_HOME/hub
    env.pop("HF_DATASETS_CACHE", None)
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-c", "from ches_filter.cli.app import main; main()", "score", "org/name", "--split", "test",
         "--config", "other", "--model", hub_model, "-o", str(out), "--device", "cpu",
         "--dtype", "float32", "--json"],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "reading hub dataset org/name (cached" in done.stderr
    table = pq.read_table(out / "data").to_pylist()
    expected = rows("other-test", 5)
    assert [{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in table] == expected
    assert [row["row_id"] for row in table] == list(range(5))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["id"] == "org/tiny"

    # The same rows scored from the cached file and the model folder directly: the same scores.
    local = tmp_path / "local"
    snapshot = tmp_path / "hf" / "hub" / "datasets--org--name" / "snapshots" / COMMIT_1
    result = CliRunner().invoke(
        app,
        ["score", str(snapshot / "other" / "test-00000-of-00001.parquet"), "-o", str(local),
         "--model", str(tiny_llama_dir), "--device", "cpu", "--dtype", "float32"],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    want = pq.read_table(local / "data").to_pylist()
    for got_row, want_row in zip(table, want, strict=True):
        assert got_row["status"] == want_row["status"] == "ok"
        # Same weights, same tokens, same code on the same CPU: equal to float32 rounding of a
        # possibly different thread split (1e-6 relative is far below any real difference).
        for name in ("ches", "ln_ches", "last_hidden_inner"):
            assert got_row[name] == pytest.approx(want_row[name], rel=1e-6, abs=1e-9), name
