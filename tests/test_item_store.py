"""engine.item_store: a run's per-item scores, read back only for the same student on the same items."""

import dataclasses
import os

from engine import item_store
from engine.item_store import StudentKey
from engine.tasks.item_scores import ItemScores

KEY = StudentKey("3", "abc", "report", "default", None, 0, 4096, "code-1")
SCORES = {
    "copy": ItemScores(items=[2, 0], values=[0.5, 1.0], weights=[3.0, 1.0]),
    "summarize": ItemScores(items=[1], values=[0.2], weights=[1.0], predictions=["a cat"], references=["the cat"]),
}


def test_the_same_student_reads_back_what_was_stored(tmp_path):
    path = item_store.save(tmp_path, KEY, SCORES)
    assert path == tmp_path / "paired-items" / "3-report.json.xz"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    assert item_store.load(tmp_path, KEY) == (SCORES, False)


def test_another_student_or_other_items_read_nothing_and_other_code_only_when_asked(tmp_path):
    item_store.save(tmp_path, KEY, SCORES)
    for change in ({"digest": "abd"}, {"split_seed": 1}, {"suite": "paper"}, {"batch_tokens": 2048}):
        assert item_store.load(tmp_path, dataclasses.replace(KEY, **change)) == (None, False)
    newer = dataclasses.replace(KEY, code="code-2")
    assert item_store.load(tmp_path, newer) == (None, False)
    assert item_store.load(tmp_path, newer, any_code=True) == (SCORES, True)


def test_a_damaged_or_linked_file_is_not_read(tmp_path):
    path = item_store.save(tmp_path, KEY, SCORES)
    path.write_bytes(b"not xz")
    assert item_store.load(tmp_path, KEY) == (None, False)
    elsewhere = tmp_path / "elsewhere.json.xz"
    (tmp_path / "other").mkdir()
    item_store.save(tmp_path / "other", KEY, SCORES).rename(elsewhere)
    path.unlink()
    os.symlink(elsewhere, path)
    assert item_store.load(tmp_path, KEY) == (None, False)
