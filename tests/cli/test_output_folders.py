"""Output folders under faults (issue #13, items 1, 2, 3, 8, 10): the input is never touched,
one run per folder, every shard verified by its reader, no temp file left, our own folders
recognised. Locks, signals and disk limits are exercised in real subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from score_fixtures import make_score_output, synthetic_rows
from typer.testing import CliRunner

import ches_filter.pipeline as pipeline
from ches_filter.cli.app import app
from ches_filter.data.lock import LOCK_NAME, FolderLock
from ches_filter.data.shards import ShardWriter, prepare_output_dir

REPO = Path(__file__).resolve().parents[2]
STANDARD = REPO / "tests" / "fixtures" / "layouts" / "standard.jsonl"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def ches(*args, timeout: int = 120, preexec=None) -> subprocess.CompletedProcess:
    """The real CLI in a fresh process (this checkout's code)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-c", "from ches_filter.cli.app import main; main()", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=env, check=False, preexec_fn=preexec,
    )  # fmt: skip


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(pipeline, "load_model", refuse)


def assert_refused(result, *words: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.stderr, (word, result.stderr)


def parquet_input(folder: Path) -> Path:
    """A dataset in the layout our own output uses: DIR/data/train-00000-of-00001.parquet."""
    path = folder / "data" / "train-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    rows = [json.loads(line) for line in STANDARD.read_text().splitlines() if line.strip()]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- 1. never touch the input ---------------------------------------------------------------------


@pytest.mark.parametrize("how", ["same", "output holds input", "output inside input", "symlink"])
def test_score_refuses_an_output_that_overlaps_the_input(no_model_load, tmp_path, how):
    data = tmp_path / "mydata"
    parquet_input(data)
    before = files_under(data)
    dataset, output = {
        "same": (data, data),  # the reported case: the input's own files would be unlinked
        "output holds input": (data / "data", data),
        "output inside input": (data, data / "scores"),
        "symlink": (data, tmp_path / "link" / "scores"),
    }[how]
    if how == "symlink":
        (tmp_path / "link").symlink_to(data)
    result = invoke("score", dataset, "-o", output, "--overwrite")
    assert_refused(result, "the input")
    assert files_under(data) == before  # nothing deleted, nothing written


def test_score_refuses_an_output_holding_a_single_input_file(no_model_load, tmp_path):
    shutil.copy(STANDARD, tmp_path / "pairs.jsonl")
    result = invoke("score", tmp_path / "pairs.jsonl", "-o", tmp_path, "--overwrite")
    assert_refused(result, "contains the input")
    assert (tmp_path / "pairs.jsonl").read_bytes() == STANDARD.read_bytes()


def test_filter_refuses_outputs_inside_the_scores_or_each_other(tmp_path):
    scores = make_score_output(tmp_path / "scores", n=10, n_shards=2)
    before = files_under(scores)
    for args in (["-o", scores / "kept"], ["-o", tmp_path / "kept", "--removed", scores / "r"],
                 ["-o", tmp_path / "kept", "--removed", tmp_path / "kept" / "removed"],
                 ["-o", tmp_path]):  # fmt: skip
        result = invoke("filter", scores, "--top-k", "1", "--overwrite", *args)
        assert_refused(result)
        assert "inside" in result.stderr or "contains" in result.stderr or "overlap" in result.stderr
    assert files_under(scores) == before


@pytest.mark.parametrize("option", ["-o", "--removed", "--scores-output"])
def test_filter_of_a_dataset_refuses_outputs_inside_it(no_model_load, tmp_path, option):
    data = tmp_path / "mydata"
    parquet_input(data)
    before = files_under(data)
    args = {"-o": ["-o", data / "kept"], "--removed": ["-o", tmp_path / "kept", "--removed", data],
            "--scores-output": ["-o", tmp_path / "kept", "--scores-output", data / "s"]}[option]
    result = invoke("filter", data, "--top-k", "1", "--overwrite", *args)
    assert_refused(result, f"{option if option != '-o' else '--output'} ", "the input")
    assert files_under(data) == before


def test_report_files_never_replace_part_of_the_scores(tmp_path):
    scores = make_score_output(tmp_path / "scores", n=10, n_shards=2)
    manifest = (scores / "manifest.json").read_bytes()
    for option, target in (("--json", scores / "manifest.json"),
                           ("--html", scores / "data" / "train-00000-of-00002.parquet"),
                           ("--markdown", scores / "data" / "report.md")):  # fmt: skip
        result = invoke("report", scores, "--no-highlight", "-q", option, target)
        assert_refused(result, "would replace part of the scores folder")
    assert (scores / "manifest.json").read_bytes() == manifest
    beside = invoke("report", scores, "--no-highlight", "-q", "--html", scores / "report.html")
    assert beside.exit_code == 0, beside.output  # beside the manifest is fine (README does it)


# -- 2. one run per folder -------------------------------------------------------------------------

HOLD = """
import sys, time
from ches_filter.data.lock import FolderLock
lock = FolderLock.acquire(sys.argv[1], command="ches score held-by-test")
print("held", flush=True)
time.sleep(120)
"""


def hold_lock(folder: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE,
                            text=True, env=env)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_into_a_held_folder_exits_2_naming_the_holder(tmp_path):
    out = tmp_path / "out"
    holder = hold_lock(out)
    try:
        done = ches("score", STANDARD, "-o", out, "--overwrite")
        assert done.returncode == 2, done.stderr
        assert f"pid {holder.pid}" in done.stderr and "held-by-test" in done.stderr
        assert "Traceback" not in done.stderr
        scores = make_score_output(tmp_path / "scores", n=10, n_shards=2)
        done = ches("filter", scores, "--top-k", "1", "-o", out, "--overwrite", "--no-report")
        assert done.returncode == 2 and f"pid {holder.pid}" in done.stderr, done.stderr
        # a reader refuses a folder that is still being written
        (out / "manifest.json").write_text("{}")
        done = ches("report", out, "--no-highlight", "-q")
        assert done.returncode == 2 and "still being written" in done.stderr, done.stderr
    finally:
        holder.kill()
        holder.wait()
    assert (out / LOCK_NAME).is_file()  # SIGKILL: the file stays, the kernel dropped the flock
    scores = make_score_output(tmp_path / "scores2", n=10, n_shards=2)
    done = ches("filter", scores, "--top-k", "1", "-o", out, "--overwrite", "--no-report")
    assert done.returncode == 0, done.stderr
    assert f"took over the lock of {out} left by pid {holder.pid}" in done.stderr
    assert not (out / LOCK_NAME).exists()  # released on exit


def test_two_real_runs_one_slow_the_second_refused(tmp_path):
    """A real `ches filter` held up mid-run (SIGSTOP) keeps the folder; the second run exits 2."""
    scores = make_score_output(tmp_path / "scores", synthetic_rows(4000), n_shards=4)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    first = subprocess.Popen(
        [sys.executable, "-c", "from ches_filter.cli.app import main; main()", "filter", str(scores),
         "--top-k", "1", "-o", str(out), "--rows-per-shard", "2", "--no-report"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (out / LOCK_NAME).is_file() or not (out / LOCK_NAME).read_text().strip():
            assert time.monotonic() < deadline and first.poll() is None, "first run never locked"
            time.sleep(0.01)
        first.send_signal(signal.SIGSTOP)
        second = ches("filter", scores, "--top-k", "1", "-o", out, "--overwrite", "--no-report")
        assert second.returncode == 2, second.stderr
        assert f"pid {first.pid}" in second.stderr
    finally:
        first.send_signal(signal.SIGCONT)
        first.wait(timeout=120)
    assert first.returncode == 0
    assert json.loads((out / "manifest.json").read_text())["counts"]["kept"] == 3999


def test_temp_names_are_unique_per_writer(tmp_path):
    prepare_output_dir(tmp_path, overwrite=True)
    schema = pa.schema([("row_id", pa.int64())])
    a = ShardWriter(tmp_path, split="train", schema=schema, rows_per_shard=1)
    b = ShardWriter(tmp_path, split="train", schema=schema, rows_per_shard=1)
    for writer in (a, b):
        writer.write_rows([{"row_id": 1}, {"row_id": 2}])
        writer._raise_failures(wait_for=0)
    names = sorted(p.name for p in (tmp_path / "data").iterdir())
    assert len(names) == 4 and all(str(os.getpid()) in n for n in names)  # 2 each, none shared
    a.abort()
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == sorted(
        n for n in names if b.token in n)  # a's abort removed a's files only  # fmt: skip
    b.abort()


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_note(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    import socket

    (tmp_path / LOCK_NAME).write_text(json.dumps(
        {"pid": int(dead.stdout), "host": socket.gethostname(), "command": "ches score x",
         "started": "2026-01-01T00:00:00+00:00"}))  # fmt: skip
    notes: list[str] = []
    with FolderLock.acquire(tmp_path, command="test", log=notes.append):
        held = json.loads((tmp_path / LOCK_NAME).read_text())
        assert held["pid"] == os.getpid() and held["command"] == "test"
    assert notes and f"pid {int(dead.stdout)}" in notes[0] and "no longer running" in notes[0]
    assert not (tmp_path / LOCK_NAME).exists()


# -- 3. shards verified by every reader ------------------------------------------------------------


@pytest.fixture
def five_shards(tmp_path) -> Path:
    """9 rows, 2 per shard: shards of 2, 2, 2, 2 and 1 rows."""
    return make_score_output(tmp_path / "scores", synthetic_rows(9), n_shards=5)


def shard(folder: Path, index: int) -> Path:
    return folder / "data" / f"train-{index:05d}-of-00005.parquet"


@pytest.mark.parametrize("damage", ["deleted", "truncated", "first truncated", "replaced",
                                    "same size", "extra"])
def test_filter_and_report_refuse_a_damaged_score_folder_naming_the_file(five_shards, tmp_path,
                                                                        damage):
    target = shard(five_shards, 0 if damage == "first truncated" else 2)
    damage = damage.removeprefix("first ")
    if damage == "deleted":  # a partial copy
        target.unlink()
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[:-100])
    elif damage == "replaced":  # another shard in its place (1 row, not 2)
        shutil.copy(shard(five_shards, 4), target)
    elif damage == "same size":  # one byte changed: only the checksum can tell
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    else:  # a shard the manifest does not list
        shutil.copy(shard(five_shards, 4), five_shards / "data" / "train-00005-of-00006.parquet")
    named = target.name if damage != "extra" else "train-00005-of-00006.parquet"
    result = invoke("filter", five_shards, "--top-k", "1", "-o", tmp_path / "kept")
    assert_refused(result, named)
    assert not (tmp_path / "kept" / "manifest.json").exists()
    result = invoke("report", five_shards, "--no-highlight", "-q")
    assert_refused(result, named)


def test_an_intact_folder_filters_and_its_manifest_lists_checked_shards(five_shards, tmp_path):
    result = invoke("filter", five_shards, "--top-k", "1", "-o", tmp_path / "kept",
                    "--removed", tmp_path / "removed", "--rows-per-shard", "3")  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "kept" / "manifest.json").read_text())
    import hashlib

    for folder, entries in ((tmp_path / "kept", manifest["shards"]),
                            (tmp_path / "removed", manifest["removed"]["shards"])):  # fmt: skip
        assert entries and [e["path"] for e in entries] == sorted(
            f"data/{p.name}" for p in (folder / "data").iterdir())  # fmt: skip
        for entry in entries:
            path = folder / entry["path"]
            assert entry["rows"] == pq.read_metadata(path).num_rows
            assert entry["bytes"] == path.stat().st_size
            assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sum(e["rows"] for e in manifest["shards"]) == 8


def test_an_old_manifest_without_checksums_is_read_with_a_note(five_shards, tmp_path):
    manifest = json.loads((five_shards / "manifest.json").read_text())
    manifest["shards"] = [entry["path"] for entry in manifest["shards"]]
    (five_shards / "manifest.json").write_text(json.dumps(manifest))
    result = invoke("filter", five_shards, "--top-k", "1", "-o", tmp_path / "kept")
    assert result.exit_code == 0, result.output
    assert "predates shard checksums" in result.stderr
    shard(five_shards, 1).unlink()  # presence is still checked
    result = invoke("filter", five_shards, "--top-k", "1", "-o", tmp_path / "kept2")
    assert_refused(result, "train-00001-of-00005.parquet is missing")


# -- 8. temp files ---------------------------------------------------------------------------------


def test_a_full_disk_leaves_no_temp_file(tmp_path, monkeypatch):
    import errno

    calls = {"n": 0}
    original = pq.ParquetWriter.write_table

    def write_table(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # two shards written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", write_table)
    prepare_output_dir(tmp_path / "out", overwrite=False)
    schema = pa.schema([("row_id", pa.int64())])
    with pytest.raises(OSError, match="No space"), ShardWriter(
        tmp_path / "out", split="train", schema=schema, rows_per_shard=2
    ) as writer:
        for i in range(0, 10, 2):
            writer.write_rows([{"row_id": i}, {"row_id": i + 1}])
    assert calls["n"] >= 3  # later batches may have been queued before the error surfaced
    assert list((tmp_path / "out" / "data").iterdir()) == []


def _small_file_limit() -> None:  # in the child, before exec: writes past 64 KiB fail (EFBIG)
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


def test_a_file_size_limit_mid_run_leaves_no_temp_file(tmp_path):
    scores = make_score_output(tmp_path / "scores", synthetic_rows(3000), n_shards=1)
    assert (scores / "data" / "train-00000-of-00001.parquet").stat().st_size > 64 * 1024
    out = tmp_path / "out"
    done = ches("filter", scores, "--top-k", "1", "-o", out, "--no-report", preexec=_small_file_limit)
    assert done.returncode != 0, done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == []  # no .tmp, no lock


def test_overwrite_removes_the_temp_files_of_dead_runs(tmp_path):
    scores = make_score_output(tmp_path / "scores", n=10, n_shards=2)
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    stale = [out / "data" / ".train-00000.4242-deadbeef.parquet.tmp",
             out / "data" / ".train-00000.parquet.tmp",  # the names before this version
             out / ".manifest.json.4242-deadbeef.tmp"]  # fmt: skip
    for path in stale:
        path.write_bytes(b"x" * 1000)
    user_file = out / "data" / ".keep"  # not ours: stays
    user_file.write_text("")
    refused = invoke("filter", scores, "--top-k", "1", "-o", out, "--no-report")
    assert_refused(refused, "not empty")
    assert all(p.exists() for p in stale)
    result = invoke("filter", scores, "--top-k", "1", "-o", out, "--no-report", "--overwrite")
    assert result.exit_code == 0, result.output
    assert not any(p.exists() for p in stale) and user_file.exists()


# -- 10. our own folders recognised ----------------------------------------------------------------


@pytest.mark.parametrize("state", ["only tmp", "empty data", "shards, no manifest", "lock only"])
def test_filter_and_report_recognise_an_interrupted_score_folder(no_model_load, tmp_path, state):
    folder = tmp_path / "scores"
    if state == "shards, no manifest":
        make_score_output(folder, n=10, n_shards=2)
        (folder / "manifest.json").unlink()
    else:
        (folder / "data").mkdir(parents=True)
        if state == "only tmp":
            (folder / "data" / ".train-00000.77-abcd.parquet.tmp").write_bytes(b"PAR1")
        if state == "lock only":
            (folder / LOCK_NAME).write_text("")
            (folder / "data" / ".train-00000.77-abcd.parquet.tmp").write_bytes(b"PAR1")
    for args in (["filter", folder, "--top-k", "1", "-o", tmp_path / "kept"],
                 ["report", folder, "--no-highlight", "-q"],
                 ["score", folder, "-o", tmp_path / "rescored"]):  # fmt: skip
        result = invoke(*args)
        assert_refused(result, "an interrupted `ches score` output", "rerun")
        assert "no data files" not in result.stderr


def test_a_manifest_without_its_shards_says_which_are_missing(tmp_path):
    folder = make_score_output(tmp_path / "scores", n=10, n_shards=2)
    for path in (folder / "data").iterdir():
        path.unlink()
    for args in (["filter", folder, "--top-k", "1", "-o", tmp_path / "kept"],
                 ["report", folder, "--no-highlight", "-q"]):  # fmt: skip
        result = invoke(*args)
        assert_refused(result, "train-00000-of-00002.parquet is missing (and 1 more)")
        assert "one JSON object" not in result.stderr


def test_a_score_output_given_to_score_is_named_as_such(no_model_load, tmp_path):
    folder = make_score_output(tmp_path / "scores", n=10, n_shards=2)
    result = invoke("score", folder, "-o", tmp_path / "again")
    assert_refused(result, "is a `ches score` output", "score the original dataset")


def test_an_old_output_nested_in_the_input_is_skipped_with_a_note(tmp_path, monkeypatch):
    data = tmp_path / "mydata"
    data.mkdir()
    shutil.copy(STANDARD, data / "pairs.jsonl")
    make_score_output(data / "old.ches", n=10, n_shards=2)  # from before item 1 refused this
    seen = {}

    def stop(plan, **kwargs):  # the plan is what matters: no need to load a model
        seen["plan"] = plan
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_scoring", stop)
    result = invoke("score", data, "-o", tmp_path / "new")
    assert result.exit_code == 130, result.output
    assert "mixes file formats" not in result.output
    assert "skipped ches output folder(s): old.ches" in result.stderr
    assert [p.name for p in seen["plan"].source.files] == ["pairs.jsonl"]


def test_a_filter_output_is_a_dataset_made_of_its_listed_shards(tmp_path, monkeypatch):
    scores = make_score_output(tmp_path / "scores", n=10, n_shards=2)
    assert invoke("filter", scores, "--top-k", "1", "-o", tmp_path / "kept").exit_code == 0
    seen = {}

    def stop(plan, **kwargs):
        seen["plan"] = plan
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_scoring", stop)
    result = invoke("score", tmp_path / "kept", "-o", tmp_path / "rescored")
    assert result.exit_code == 130, result.output
    assert [p.name for p in seen["plan"].source.files] == ["train-00000-of-00001.parquet"]
    assert "mixes file formats" not in result.output  # report.json, manifest.json are not data
