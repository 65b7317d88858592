"""errors.clip and clip_names: what every message uses to quote dataset content."""

from __future__ import annotations

from ches_filter.errors import CLIP_LIMIT, clip, clip_names


def test_clip_keeps_short_text_and_cuts_long_text() -> None:
    assert clip("short") == "short"
    assert clip("x" * CLIP_LIMIT) == "x" * CLIP_LIMIT
    cut = clip("x" * 5000)
    assert len(cut) == CLIP_LIMIT and cut == "x" * (CLIP_LIMIT - 1) + "…"
    assert clip("abcdef", 4) == "abc…"
    assert clip(12345, 3) == "12…"  # not a string: its str()


def test_clip_names_counts_what_it_leaves_out() -> None:
    assert clip_names([]) == "(none)"
    assert clip_names(["a", "b"]) == "a, b"
    names = [f"field_{i}" for i in range(5000)]
    text = clip_names(names)
    assert len(text) <= CLIP_LIMIT
    shown = text.split(", … (")[0].split(", ")
    assert shown == names[: len(shown)]  # whole names, in order
    assert text.endswith(f", … ({5000 - len(shown):,} more)")
    huge = clip_names(["y" * 1000, "b"])
    assert len(huge) <= CLIP_LIMIT and huge.endswith("…, … (1 more)")
    assert len(clip_names(["y" * 1000])) == CLIP_LIMIT
