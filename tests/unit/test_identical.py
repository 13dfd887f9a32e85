"""Finding the pictures a dataset holds twice, by a digest of their pixels."""

from __future__ import annotations

import numpy as np

from visionpipe import identical


def test_groups_are_the_rows_alike_in_order_of_their_first_row() -> None:
    rng = np.random.default_rng(0)
    pictures = rng.integers(0, 256, (4, 3, 8, 8), dtype=np.uint8)
    rows = pictures[[2, 0, 1, 0, 3, 2, 0, 1]]  # 0 three times, 2 and 1 twice, 3 once
    blank = np.zeros((2, 3, 8, 8), np.uint8)  # what an undecodable file leaves in its row
    digests = identical.digests(np.concatenate([rows, blank]))
    assert len(digests) == 10 * identical.DIGEST_BYTES
    assert identical.groups(digests, skip=[8, 9]) == [[0, 5], [1, 3, 6], [2, 7]]
    assert identical.groups(digests) == [[0, 5], [1, 3, 6], [2, 7], [8, 9]]
    assert identical.groups(digests, skip=range(10)) == []
    # One pixel apart is another picture.
    other = rows[:1].copy()
    other[0, 0, 0, 0] ^= 1
    assert identical.groups(identical.digests(np.concatenate([rows[:1], other]))) == []


def test_copies_in_val_and_test_only_are_not_called_trained_on() -> None:
    seen = [
        identical.Copy("train/a/1.jpg", "a", "train"),
        identical.Copy("test/a/1.jpg", "a", "test"),
    ]
    twice = [identical.Copy("val/a/2.jpg", "a", "val"), identical.Copy("test/a/2.jpg", "a", "test")]
    trained, held_out = identical.warnings([seen, twice], "report.json", 64)
    assert trained.startswith("1 picture is in more than one split") and "test/a/1.jpg" in trained
    assert "val/a/2.jpg" not in trained
    assert held_out.startswith("1 picture is in both val and test, not in train")
    assert "e.g. val/a/2.jpg (a, val) = test/a/2.jpg (a, test)" in held_out
    assert "trained on" not in held_out
    assert identical.warnings([twice], "report.json", 64) == [held_out]


def test_the_example_of_a_copy_in_two_splits_shows_two_splits() -> None:
    group = [identical.Copy(f"train/a/{i}.jpg", "a", "train") for i in range(4)]
    group.append(identical.Copy("test/b/0.jpg", "b", "test"))
    in_classes, in_splits = identical.warnings([group], "report.json", 64)
    for line in (in_classes, in_splits):
        assert "e.g. train/a/0.jpg (a, train) = test/b/0.jpg (b, test) = train/a/1.jpg" in line
        assert "and 2 more" in line
