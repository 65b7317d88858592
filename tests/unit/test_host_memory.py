"""The allocator setting that CPU scoring applies (see ches_filter/model/host_memory.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import sys
from ches_filter.model import host_memory
first = host_memory.retain_freed_memory()
second = host_memory.retain_freed_memory()
print(first, second)
"""


def run(env_extra: dict[str, str]) -> str:
    import os

    env = {**os.environ, **env_extra}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, check=True)
    return done.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_retains_on_glibc_and_is_idempotent() -> None:
    # A fresh process each time: the setting is process-wide.
    assert run({"CHES_MALLOC": ""}) == "True True"


def test_default_in_the_environment_leaves_malloc_alone() -> None:
    assert run({"CHES_MALLOC": "default"}) == "False False"
