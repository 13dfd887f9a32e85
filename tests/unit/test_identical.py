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
