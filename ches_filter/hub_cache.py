"""Find a hub repo's files in the local Hugging Face cache, offline.

``huggingface_hub`` (and ``datasets``, and ``transformers``, which download through it) keep
each repo under ``$HF_HUB_CACHE/{models,datasets}--owner--name/``: ``refs/<branch or tag>`` holds
a commit sha, ``snapshots/<sha>/`` holds the repo's files (symlinks into ``blobs/``). A revision
is found the same way ``huggingface_hub.snapshot_download(local_files_only=True)`` finds it: a
ref names a commit, a commit names a snapshot folder. (That function itself is not used: when a
tree listing is cached, it refuses snapshots that lack any file of the repo, and a dataset
downloaded by ``datasets`` holds only the files of the configs that were loaded.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass
class NotCached(Exception):
    """``repo_id`` (at ``revision``) has no snapshot in the cache; ``cached``: the revisions it has."""

    repo_id: str
    revision: str | None
    cache: Path
    cached: list[str]

    @property
    def repo_cached(self) -> bool:
        return bool(self.cached)

    def __str__(self) -> str:
        if not self.repo_cached:
            return f"{self.repo_id!r} is not in the local Hugging Face cache ({self.cache})"
        return (
            f"revision {self.revision!r} of {self.repo_id!r} is not in the local Hugging Face cache "
            f"(cached: {', '.join(self.cached)})"
        )


def hub_cache_dir() -> Path:
    """``$HF_HUB_CACHE`` (default ``$HF_HOME/hub``), as huggingface_hub read it at import."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``), as huggingface_hub read it."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _revisions(storage: Path) -> list[str]:
    """The refs (branches, tags) of a cached repo, else the commits of its snapshots."""
    refs = storage / "refs"
    if refs.is_dir():
        names = sorted(p.relative_to(refs).as_posix() for p in refs.rglob("*") if p.is_file())
        if names:
            return names
    snapshots = storage / "snapshots"
    return sorted(p.name for p in snapshots.iterdir() if p.is_dir()) if snapshots.is_dir() else []


def snapshot_folder(repo_id: str, *, repo_type: str, revision: str | None = None) -> Path:
    """The cached snapshot of ``repo_id`` at ``revision`` (a branch, tag or commit sha; default
    ``main``); raises :class:`NotCached`."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    cache = hub_cache_dir()
    storage = cache / repo_folder_name(repo_id=repo_id, repo_type=repo_type)
    wanted = revision or constants.DEFAULT_REVISION
    commit = wanted
    if ".." not in Path(wanted).parts:  # a revision is a name, never a path out of the repo
        ref = storage / "refs" / wanted
        if ref.is_file():
            commit = ref.read_text().strip()
        snapshot = storage / "snapshots" / commit
        if _COMMIT.match(commit) and snapshot.is_dir():
            return snapshot
    raise NotCached(repo_id, revision or constants.DEFAULT_REVISION, cache, _revisions(storage))
