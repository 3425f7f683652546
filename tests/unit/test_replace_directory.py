"""Training scripts swap their finished weights folder into place in one step."""

from __future__ import annotations

import pytest

from brainrecon.paths import replace_directory


def test_new_folder_replaces_the_old_one_and_nothing_is_left_behind(tmp_path):
    target = tmp_path / "weights"
    target.mkdir()
    (target / "old.bin").write_text("old")
    new = tmp_path / ".weights.tmp"
    new.mkdir()
    (new / "new.bin").write_text("new")
    assert replace_directory(new, target) == target
    assert sorted(p.name for p in target.iterdir()) == ["new.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights"]


def test_first_write_and_a_stale_old_folder(tmp_path):
    (tmp_path / ".weights.old").mkdir()  # left by a run killed between the two renames
    new = tmp_path / "tmp"
    new.mkdir()
    replace_directory(new, tmp_path / "weights")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights"]


def test_missing_source_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing"):
        replace_directory(tmp_path / "nothing", tmp_path / "weights")
