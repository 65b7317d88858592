"""``manifest.json``: what a ``ches score`` or ``ches filter`` output holds, and how it was made.

One typed record per kind (:class:`ScoreManifest`, :class:`FilterManifest`), written
(:func:`write_manifest`, atomically, last of all: its presence marks an output complete) and read
(:func:`read_manifest`) here and nowhere else. ``schema_version`` numbers the format; manifests
written before it existed (no ``schema_version``) read as version 0 with the same keys, and keys
this version does not know are kept in ``extra`` and written back unchanged. The environment
(python and library versions, the device's name) is recorded with every manifest.
"""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, ClassVar

from ches_filter.data.shards import MANIFEST_NAME, atomic_write_bytes
from ches_filter.errors import DatasetError

#: The manifest format written now. 0: manifests from before the field existed (same keys).
SCHEMA_VERSION = 1
PACKAGES = ("ches-filter", "torch", "transformers", "datasets", "pyarrow", "numpy", "tokenizers")


def tool_info() -> dict[str, str]:
    try:
        ver = version("ches-filter")
    except PackageNotFoundError:  # a source tree that isn't installed
        ver = "0+unknown"
    return {"name": "ches-filter", "version": ver}


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "Processor") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: Any = None) -> str:
    """A name for people: the GPU's (``torch.cuda.get_device_name``) or the CPU's model."""
    kind = getattr(device, "type", None) or (str(device).split(":")[0] if device else "cpu")
    if kind == "cuda":
        torch = sys.modules.get("torch")
        if torch is not None:
            try:
                return str(torch.cuda.get_device_name(device))
            except (RuntimeError, AssertionError, ValueError):
                pass
        return "CUDA device"
    if kind == "mps":
        return f"Apple MPS ({platform.machine() or 'arm64'})"
    return cpu_name()


def environment(device: Any = None) -> dict[str, Any]:
    """Python, platform, library versions and the device a run used (nothing is imported)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "device": str(device) if device is not None else "cpu",
        "device_name": device_name(device),
    }


@dataclass
class _Manifest:
    KINDS: ClassVar[tuple[str, ...]] = ()

    kind: str
    schema_version: int = SCHEMA_VERSION
    tool: dict[str, Any] = field(default_factory=tool_info)
    command: Any = None  # scores: the argv list; filter: one shell-quoted string
    created_at: str | None = field(default_factory=now_utc)
    environment: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**out, **{k: v for k, v in self.extra.items() if k not in out}}

    def get(self, key: str, default: Any = None) -> Any:
        """Dict-style access (``manifest.get("model")``) for code that predates the dataclass."""
        value = self.to_dict().get(key, default)
        return default if value is None else value

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("schema_version", 0)  # written before the field existed
        values.setdefault("created_at", None)
        values.setdefault("tool", None)
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})


@dataclass
class ScoreManifest(_Manifest):
    """``ches score``'s manifest (docs/scores.md lists every key)."""

    KINDS: ClassVar[tuple[str, ...]] = ("scores",)

    kind: str = "scores"
    spec_version: str | None = None
    convention: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    input: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    engine: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, Any] = field(default_factory=dict)
    #: one ``{"path", "rows", "bytes", "sha256"}`` per shard (plain paths before checksums)
    shards: list[Any] = field(default_factory=list)
    schema: dict[str, str] = field(default_factory=dict)
    #: SHA-256 over what decided the scores (``ches_filter.pipeline.ScorePlan.fingerprint``)
    plan_fingerprint: str | None = None


@dataclass
class FilterManifest(_Manifest):
    """``ches filter``'s manifest: ``kind`` is ``filter`` (kept rows) or ``filter-removed``."""

    KINDS: ClassVar[tuple[str, ...]] = ("filter", "filter-removed")

    kind: str = "filter"
    rule: dict[str, Any] = field(default_factory=dict)
    by: str | None = None
    cutoff: float | None = None
    kept_score_range: list[float] | None = None
    keep_unscored: bool = True
    keep_scores: bool = False
    counts: dict[str, Any] = field(default_factory=dict)
    input: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, Any] = field(default_factory=dict)
    shards: list[Any] = field(default_factory=list)  # as in ScoreManifest
    removed: dict[str, Any] | None = None
    report: dict[str, str] | None = None


Manifest = ScoreManifest | FilterManifest


def manifest_path(folder: Path | str) -> Path:
    return Path(folder) / MANIFEST_NAME


def write_manifest(folder: Path | str, manifest: Manifest) -> Path:
    """Write ``folder/manifest.json`` atomically (temp file, fsync, rename)."""
    path = manifest_path(folder)
    atomic_write_bytes(path, (json.dumps(manifest.to_dict(), indent=2) + "\n").encode("utf-8"))
    return path


def parse_manifest(data: Any, *, where: str = MANIFEST_NAME) -> Manifest:
    """A manifest from its JSON value: the current format, or one without ``schema_version``."""
    if not isinstance(data, dict):
        raise DatasetError(f"{where} is not a JSON object")
    kind = data.get("kind")
    if kind is None:  # the oldest manifests: tell the kinds apart by their keys
        kind = "filter" if "rule" in data else "scores"
        data = {**data, "kind": kind}
    schema_version = data.get("schema_version", 0)
    if not isinstance(schema_version, int) or schema_version > SCHEMA_VERSION:
        raise DatasetError(
            f"{where} has schema_version {schema_version!r}; this ches-filter reads up to "
            f"{SCHEMA_VERSION}",
            hint="upgrade ches-filter, or rerun the command that wrote the folder",
        )
    for cls in (ScoreManifest, FilterManifest):
        if kind in cls.KINDS:
            try:
                return cls.from_dict(data)
            except TypeError as exc:  # pragma: no cover - from_dict passes known keys only
                raise DatasetError(f"{where} does not fit a {kind} manifest: {exc}") from None
    raise DatasetError(f"{where} is of an unknown kind {kind!r}")


def read_manifest(folder: Path | str) -> Manifest:
    """Read ``folder/manifest.json`` (a DatasetError names the file when it can't be read)."""
    path = manifest_path(folder)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"no {MANIFEST_NAME} in {folder}") from None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None
    return parse_manifest(data, where=str(path))
