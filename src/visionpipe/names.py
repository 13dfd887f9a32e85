"""How names read in a message: a list cut to a few with how many more, a count with its noun,
a name with its control characters escaped. A dataset of 250 classes or a folder of 10,000
photos must not turn one warning into a page."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

SHOWN = 20  # names listed in one line, the rest counted


def listed(names: Sequence[str], most: int = SHOWN) -> str:
    """Up to `most` of `names`, in their order (each on one line: `one_line`), and how many
    more."""
    more = len(names) - most
    return ", ".join(map(one_line, names[:most])) + (f" and {more} more" if more > 0 else "")


def counted(n: int, word: str, plural: str | None = None) -> str:
    """`n` and `word`, in the plural (`word` + s, or `plural`) unless `n` is 1."""
    return f"{n} {word if n == 1 else plural or word + 's'}"


def one_line(name: str) -> str:
    """`name` with its control characters escaped (a newline as `\\n`): a file name holding one
    would break a line of output in two."""
    return "".join(repr(c)[1:-1] if is_control(c) else c for c in name)


# The bidirectional overrides and isolates, which show the text after them reversed (an
# invoice\u202egpj.exe reads invoiceexe.jpg), and the line and paragraph separators.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def is_control(c: str) -> bool:
    """Whether `c` changes how a terminal shows what follows rather than showing itself."""
    return unicodedata.category(c) in ("Cc", "Zl", "Zp") or c in BIDI_CONTROLS


# Folder names that mean a split, not a class: what a flat collection refuses as its only
# classes, and never a near miss of a class name.
_SPLIT_LIKE = frozenset({"train", "training", "test", "testing", "val", "valid", "validation"})


# Words course and Kaggle datasets put beside a split's name: `training_set/`, `seg_train/`
# (Intel Image Classification), `train_data/`, `test images/`.
_SPLIT_COMPANIONS = frozenset({"set", "data", "seg", "images", "imgs", "split", "dataset"})


def split_like(name: str) -> bool:
    """Whether a folder is named like a split (`Test/`, `valid/`, `test1/`, `train_2024/`,
    `training_set/`, `seg_test/`, `trainset/`)."""
    lower = name.lower().rstrip("0123456789_- ")
    if lower in _SPLIT_LIKE or (lower.endswith("set") and lower[:-3] in _SPLIT_LIKE):
        return True
    words = [w for w in re.split(r"[_\-. ]+", lower) if w and not w.isdigit()]
    splits = [w for w in words if w in _SPLIT_LIKE]
    return len(splits) == 1 and all(w in _SPLIT_COMPANIONS for w in words if w not in splits)
