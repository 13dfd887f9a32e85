"""Images of a dataset that decode to the same pixels: one photo in it twice.

A copy in two classes teaches the model two labels for one input; a copy in train and in val or
test is scored as unseen although the model trained on it, which inflates those scores. Photo
collections merged from several places, or copied into a folder twice (`IMG_0042 (1).jpg`),
hold such copies; CIFAR-10's own splits hold none. An image is known by a digest of its pixels
as preprocess decoded them, the model's very input, so a renamed or re-saved copy counts and a
resized or re-compressed one does not (that would take perceptual hashing, and guesses).

numpy and hashlib only: the digests are taken in preprocess's worker processes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

DIGEST_BYTES = 16  # BLAKE2b-128: no accidental match among billions of images


def digests(images: np.ndarray) -> bytes:
    """The digests of the pixels of each of `images` (N, ...), concatenated."""
    return b"".join(
        hashlib.blake2b(np.ascontiguousarray(image), digest_size=DIGEST_BYTES).digest()
        for image in images
    )


class Copy(NamedTuple):
    """One file of a group of identical images: its name in the source, class and split."""

    file: str
    cls: str
    split: str


class Finder:
    """Collects images by digest, in the order they come, and keeps the groups of two or more."""

    def __init__(self) -> None:
        self._first: dict[bytes, tuple[int, Copy]] = {}  # digest: (arrival, first copy)
        self._groups: dict[bytes, list[Copy]] = {}

    def add(self, copies: Sequence[Copy], digests: bytes) -> None:
        """`digests`: those of `copies`, in order, as `digests()` made them."""
        for i, copy in enumerate(copies):
            key = digests[i * DIGEST_BYTES : (i + 1) * DIGEST_BYTES]
            _, first = self._first.setdefault(key, (len(self._first), copy))
            if first is not copy:
                self._groups.setdefault(key, [first]).append(copy)

    def groups(self) -> list[list[Copy]]:
        """Each set of identical images, in the order their first images came."""
        return [self._groups[k] for k in sorted(self._groups, key=lambda k: self._first[k][0])]


def in_two_classes(groups: Sequence[Sequence[Copy]]) -> list[Sequence[Copy]]:
    return [g for g in groups if len({c.cls for c in g}) > 1]


def in_two_splits(groups: Sequence[Sequence[Copy]]) -> list[Sequence[Copy]]:
    return [g for g in groups if len({c.split for c in g}) > 1]


def extra_copies(groups: Sequence[Sequence[Copy]]) -> int:
    """Images beyond the first of their group: how many fewer a collection without copies has."""
    return sum(len(g) - 1 for g in groups)


def warnings(groups: Sequence[Sequence[Copy]], report: str) -> list[str]:
    """What a user should do about the copies that skew training or scores, a line each."""
    lines = []
    if classes := in_two_classes(groups):
        lines.append(
            f"{_pictures(classes)} in more than one class (files of identical pixels,"
            f" {_example(classes[0])}): each teaches the model two labels for one picture;"
            f" delete the copies in the wrong class (all listed under 'identical' in {report})"
        )
    if splits := in_two_splits(groups):
        lines.append(
            f"{_pictures(splits)} in more than one split (files of identical pixels,"
            f" {_example(splits[0])}): the val and test scores count a copy the model trained"
            f" on as unseen; delete all copies but one (all listed under 'identical' in {report})"
        )
    return lines


def _pictures(groups: Sequence[Sequence[Copy]]) -> str:
    n = len(groups)
    return f"{n} picture{'s are' if n > 1 else ' is'}"


def _example(group: Sequence[Copy]) -> str:
    shown = " = ".join(f"{c.file} ({c.cls}, {c.split})" for c in group[:3])
    return f"e.g. {shown}" + (f" and {len(group) - 3} more" if len(group) > 3 else "")


def listing(groups: Sequence[Sequence[Copy]], limit: int = 1000) -> list[list[dict[str, str]]]:
    """The first `limit` groups as JSON: each copy's file, class and split."""
    return [
        [{"file": c.file, "class": c.cls, "split": c.split} for c in group]
        for group in groups[:limit]
    ]
