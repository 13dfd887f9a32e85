"""Photos sorted into folders named after classes (`new_photos/cat/1.jpg`): the class a photo's
folder names, and the accuracy of predictions against it, as `visionpipe predict` reports it."""

from __future__ import annotations

import os
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from visionpipe.names import listed, one_line, split_like

PER_CLASS_SHOWN = 10  # more classes than this: the lowest and highest few, not a line of 100
EXTREMES = 5  # classes shown at each end when there are more than PER_CLASS_SHOWN
NAMES_SHOWN = 5  # folder names and class names listed in the line about uncounted folders


def folder_name(file: str) -> str:
    """The name of the folder `file` sits in, as given (`..` taken lexically, links not
    followed): `photos/cat/../dog/1.jpg` sits in `dog`; a bare `1.jpg`, in the current one."""
    return os.path.basename(os.path.dirname(os.path.abspath(file)))


def folders_up(file: str, top: str | None = None) -> list[str]:
    """The names of the folders `file` sits in, nearest first, as its path was given (`..`
    taken lexically, links not followed), up to and with `top`, the folder it was found below
    (`photos` for `photos/cat/2019/1.jpg`); only the one it sits in when `top` is None."""
    here = os.path.dirname(os.path.abspath(file))
    stop = os.path.abspath(top) if top is not None else here
    names = [os.path.basename(here)]
    while here != stop and os.path.dirname(here) != here:
        here = os.path.dirname(here)
        names.append(os.path.basename(here))
    return names


def _folded(name: str) -> str:
    # A Mac's file system stores names decomposed (é as e and an accent); metadata composed.
    return unicodedata.normalize("NFC", name).casefold()


class FolderClasses:
    """Which of a model's classes a folder's name is: the class of that exact name, else the
    one class of that name in another case (`Cat/` is class `cat`), unless two classes share it
    in another case (`A` and `a`), where only the exact name counts."""

    def __init__(self, classes: Iterable[str]) -> None:
        self.exact = {unicodedata.normalize("NFC", c): c for c in classes}
        counts = Counter(_folded(c) for c in self.exact.values())
        self.folded = {_folded(c): c for c in self.exact.values() if counts[_folded(c)] == 1}

    def named(self, name: str) -> str | None:
        """The class folder `name` is named after, or None."""
        name = unicodedata.normalize("NFC", name)
        return self.exact.get(name) or self.folded.get(_folded(name))

    def of(self, file: str, top: str | None = None) -> str | None:
        """The class of the nearest folder of `file`, up to `top`, that is named after one
        (`cat/2019/1.jpg` is a cat, as training counts it), or None."""
        return next(filter(None, map(self.named, folders_up(file, top))), None)


@dataclass(frozen=True)
class ClassScore:
    name: str
    right: int
    total: int


@dataclass(frozen=True)
class FolderAccuracy:
    right: int  # images whose top class is their folder's class
    total: int  # predicted images in a folder named after a class
    per_class: list[ClassScore]  # the classes that have images, in the model's order
    outside: Counter[str]  # folder name -> predicted images in it, for folders of no class


def score(
    predicted: Iterable[tuple[str, str]], labels: Mapping[str, str], classes: list[str]
) -> FolderAccuracy | None:
    """The accuracy of `predicted` (file, top class) against `labels` (file -> its folder's
    class), each file once however often it was named; None when no predicted file is in a
    folder named after a class."""
    right: Counter[str] = Counter()
    total: Counter[str] = Counter()
    outside: Counter[str] = Counter()
    for file, top in dict(predicted).items():  # `photos photos/cat` names photos/cat/* twice
        label = labels.get(file)
        if label is None:
            outside[folder_name(file)] += 1
            continue
        total[label] += 1
        right[label] += int(top == label)
    if not total:
        return None
    per_class = [ClassScore(c, right[c], total[c]) for c in classes if total[c]]
    return FolderAccuracy(right.total(), total.total(), per_class, outside)


def _pct(right: int, total: int) -> str:
    return f"{right / total:.1%} ({right}/{total})"


def format_accuracy(acc: FolderAccuracy, top: tuple[int, int] | None = None) -> str:
    """One line: the accuracy over all (and `top`: k, the images whose class is among their
    k first, for --topk k), per class (the lowest and highest few of many), and how many
    predicted images were in no class folder."""
    n = acc.total
    line = f"accuracy on the {n} image{'s' * (n != 1)} in folders named after a class: "
    line += _pct(acc.right, n)
    if top is not None:
        line += f", top-{top[0]} {_pct(top[1], n)}"
    scores = acc.per_class
    if len(scores) <= PER_CLASS_SHOWN:
        line += "; per class: " + _scores(scores)
    else:
        ranked = sorted(scores, key=lambda s: (s.right / s.total, s.name))
        line += f"; per class, the {EXTREMES} lowest of {len(scores)}: "
        line += _scores(ranked[:EXTREMES])
        line += f"; the {EXTREMES} highest: " + _scores(ranked[-EXTREMES:][::-1])
    left = acc.outside.total()
    if left:
        line += f"; not counted: {left} predicted image{'s' * (left != 1)} in no class folder"
    return line


def _scores(scores: list[ClassScore]) -> str:
    return ", ".join(f"{s.name} {_pct(s.right, s.total)}" for s in scores)


def format_outside(acc: FolderAccuracy, classes: list[str]) -> str | None:
    """The line naming the folders whose images were not counted, with the model's classes,
    so that a `cats/` beside class `cat` is seen; None when every image counted."""
    if not acc.outside:
        return None
    folders = [f"{name}/ ({n} image{'s' * (n != 1)})" for name, n in acc.outside.most_common()]
    return (
        f"folders named after no class of the model, not counted: {_capped(folders)}; "
        f"its classes: {_capped(classes)}"
    )


def _capped(names: list[str]) -> str:
    return listed([one_line(name) for name in names], NAMES_SHOWN)


def _singulars(word: str) -> list[str]:
    """`word` and what it is the English plural of: cats, buses, boxes, churches, butterflies,
    potatoes, knives, wolves; not canes (can) or manes (man), nor bus, glass or axis (no plural:
    bu, glas, axi)."""
    forms = [word, word[:-1]] if _plural_like(word) else [word]
    if word.endswith(("ses", "xes", "zes", "ches", "shes")) or (
        word.endswith("oes") and len(word) > 5  # potatoes, heroes; not toes (to), does (do)
    ):
        forms.append(word[:-2])
    if word.endswith("ies"):
        forms.append(word[:-3] + "y")
    if word.endswith("ves"):
        forms += [word[:-3] + "f", word[:-3] + "fe"]
    return forms


def _plural_like(word: str) -> bool:
    """Whether `word` ends as an English plural does: in s, but not ss, us or is."""
    return word.endswith("s") and not word.endswith(("ss", "us", "is"))


def near_misses(
    files: Iterable[str], classes: list[str], tops: dict[str, str] | None = None
) -> str | None:
    """Where no photo sits in a folder named after a class, the line naming the folders whose
    names are a class's but for a plural either way, case or separator (`cats/` for `cat`,
    `bee/` for `bees`, `Traffic-Light/` for `traffic light`), which would have counted; None
    where there are none. Each file's folders up to its `tops` entry (the folder it was found
    below) count, as for the accuracy line (`cats/2024/1.jpg`)."""

    def key(name: str) -> str:
        return "".join(c for c in _folded(name) if c.isalnum())

    own = {key(c): c for c in classes}
    # Singular folders of plural classes (`ant/` for 'ants') only where every class is named in
    # the plural: a class 'news' or 'glasses' among others says nothing of `new/` or `glass/`.
    if own and all(_plural_like(k) for k in own):
        for c in classes:
            for singular in _singulars(key(c))[1:]:
                own.setdefault(singular, c)
    found: dict[str, str] = {}
    names = {name for f in files for name in folders_up(f, (tops or {}).get(f))}
    for name in names:
        k = key(name)
        if split_like(k):  # a split's folder (train/, test/), never a class's near miss
            continue
        stems = _singulars(k) if k else []
        match = next((own[s] for s in stems if s in own), None)
        if match is not None:
            found[name] = match
    if not found:
        return None
    pairs = [f"{name}/ for {cls!r}" for name, cls in sorted(found.items())]
    return (
        "no photo is in a folder named after one of the model's classes, so no accuracy line;"
        f" near misses: {_capped(pairs)}: rename the folders to the class names (in any case)"
        " to count them"
    )
