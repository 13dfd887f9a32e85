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
from collections.abc import Collection, Sequence
from typing import NamedTuple

import numpy as np

DIGEST_BYTES = 16  # BLAKE2b-128: no accidental match among billions of images


def digests(images: np.ndarray) -> bytes:
    """The digests of the pixels of each of `images` (N, ...), concatenated."""
    return b"".join(digest(image) for image in images)


class Copy(NamedTuple):
    """One file of a group of identical images: its name in the source, class and split."""

    file: str
    cls: str
    split: str


def groups(digests: bytes, skip: Collection[int] = ()) -> list[list[int]]:
    """The rows whose digests (`digests()` of every image, in row order) are alike, a list per
    picture with its rows in order, the lists in the order of their first rows. `skip`: rows
    with no image (undecodable ones, decoded as blanks). One sort over 16 bytes per image: a
    million images take 16 MB and about a second (bench/identical.py)."""
    keys = np.frombuffer(digests, dtype=np.dtype((np.void, DIGEST_BYTES)))
    rows = np.setdiff1d(np.arange(len(keys)), np.fromiter(skip, np.int64, len(skip)))
    if len(rows) == 0:
        return []
    _, inverse, counts = np.unique(keys[rows], return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    copied = counts[inverse] > 1
    rows, inverse = rows[copied], inverse[copied]
    order = np.argsort(inverse, kind="stable")  # rows by picture, in row order within each
    found = np.split(rows[order], np.flatnonzero(np.diff(inverse[order])) + 1)
    return sorted((g.tolist() for g in found if len(g)), key=lambda g: g[0])


def blank(digests: bytes, groups: Sequence[Sequence[int]], size: int) -> list[int]:
    """The indices of `groups` (rows, as `groups()` gives them) whose picture is all black or all
    white at `size` pixels a side: blank frames, or transparent images whose shapes are only in
    their alpha channel, which decoding drops (as torchvision's loader drops it)."""
    flat = {digest(np.full(3 * size * size, value, np.uint8)) for value in (0, 255)}
    at = DIGEST_BYTES
    return [i for i, g in enumerate(groups) if digests[g[0] * at : (g[0] + 1) * at] in flat]


def digest(image: np.ndarray) -> bytes:
    """The digest of one image's pixels (any layout: the bytes are hashed)."""
    return hashlib.blake2b(np.ascontiguousarray(image), digest_size=DIGEST_BYTES).digest()


def in_two_classes(groups: Sequence[Sequence[Copy]]) -> list[Sequence[Copy]]:
    return [g for g in groups if len({c.cls for c in g}) > 1]


def in_two_splits(groups: Sequence[Sequence[Copy]]) -> list[Sequence[Copy]]:
    return [g for g in groups if len({c.split for c in g}) > 1]


def in_one_place(groups: Sequence[Sequence[Copy]]) -> list[Sequence[Copy]]:
    """The groups whose copies share a class and a split: counted twice there, no mistake."""
    return [g for g in groups if len({(c.cls, c.split) for c in g}) == 1]


def extra_copies(groups: Sequence[Sequence[Copy]]) -> int:
    """Images beyond the first of their group: how many fewer a collection without copies has."""
    return sum(len(g) - 1 for g in groups)


def warnings(
    groups: Sequence[Sequence[Copy]], report: str, size: int, blank: Collection[int] = ()
) -> list[str]:
    """What a user should do about the copies that skew training or scores, a line each.
    `size`: the side the images were resized to, whose pixels were compared; `blank`: the
    indices of the groups whose picture is one colour throughout (`blank()`)."""
    # The files may differ (two blank frames of two sizes): what is alike is the model's input.
    alike = f"identical pixels at {size}x{size}, the model's input"
    lines = []
    if classes := in_two_classes(groups):
        lines.append(
            f"{_pictures(classes)} in more than one class ({alike},"
            f" {_example(classes[0], 'cls')}): each teaches the model two labels for one picture;"
            f" delete the copies in the wrong class (all listed under 'identical' in {report})"
        )
    splits = in_two_splits(groups)
    # Only a copy in train is one the model learned from; val and test alike (a Roboflow
    # export's valid/ and test/ sharing pictures) score one picture twice instead.
    trained = [g for g in splits if any(c.split == "train" for c in g)]
    if trained:
        lines.append(
            f"{_pictures(trained)} in more than one split ({alike},"
            f" {_example(trained[0], 'split')}): the val and test scores count a copy the model"
            f" trained on as unseen; delete all copies but one (all listed under 'identical' in"
            f" {report})"
        )
    if held_out := [g for g in splits if g not in trained]:
        lines.append(
            f"{_pictures(held_out)} in both val and test, not in train ({alike},"
            f" {_example(held_out[0], 'split')}): the test score counts pictures validation"
            f" already scored, which train.patience stops on; delete the copies in one of the"
            f" two (all listed under 'identical' in {report})"
        )
    # At most two pictures, the black and the white. Deleting copies is the wrong fix for
    # icons whose shapes were only in their alpha.
    warned = in_two_classes(groups) + splits
    if flat := [groups[i] for i in sorted(blank) if groups[i] in warned]:
        lines.append(
            f"Of these, {_pictures(flat)} all black or all white at {size}x{size} (e.g."
            f" {' = '.join(c.file for c in flat[0][:3])}): blank frames, or transparent images"
            " (icons, cut-outs) whose shapes are only in their alpha channel, which is dropped"
            " as torchvision's ImageFolder drops it; flatten those onto a background"
            " (magick IN.png -background white -flatten OUT.png) rather than delete them"
        )
    return lines


def _pictures(groups: Sequence[Sequence[Copy]]) -> str:
    n = len(groups)
    return f"{n} picture{'s are' if n > 1 else ' is'}"


def _example(group: Sequence[Copy], differ: str) -> str:
    """Up to three copies of `group`, the first of each value of field `differ` first: the
    three copies shown of a picture in two splits are never all in one split."""
    first = set({getattr(c, differ): i for i, c in reversed(list(enumerate(group)))}.values())
    order = sorted(range(len(group)), key=lambda i: (i not in first, i))
    shown = " = ".join(f"{c.file} ({c.cls}, {c.split})" for c in (group[i] for i in order[:3]))
    return f"e.g. {shown}" + (f" and {len(group) - 3} more" if len(group) > 3 else "")


def listing(groups: Sequence[Sequence[Copy]], limit: int = 1000) -> list[list[dict[str, str]]]:
    """The first `limit` groups as JSON: each copy's file, class and split."""
    return [
        [{"file": c.file, "class": c.cls, "split": c.split} for c in group]
        for group in groups[:limit]
    ]
