"""docs/cli.md is the ``--help`` of the app and of every command, and is not stale."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from ches_filter.cli.app import app

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "scripts" / "gen_cli_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_registered_command_is_documented(gen) -> None:
    registered = {info.name for info in app.registered_commands} | {
        info.name for info in app.registered_groups
    }
    paths = gen.command_paths()
    assert registered and registered <= {path[0] for path in paths if path}
    assert paths[0] == ()


def test_docs_cli_md_is_up_to_date(gen) -> None:
    current = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    fresh = gen.render()
    assert current == fresh, "docs/cli.md is stale: run python scripts/gen_cli_docs.py"
    for path in gen.command_paths():
        assert f"## `{' '.join(('ches', *path))}`" in fresh
        assert f"Usage: {' '.join(('ches', *path))} [OPTIONS]" in fresh


def test_help_shows_bracketed_defaults_written_in_help_texts(gen) -> None:
    # rich markup would swallow an unescaped "[default: …]" inside a help text
    assert "manifest.json [default: DATASET name" in gen.help_text(("score",))
