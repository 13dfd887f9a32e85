"""Classify image files with the exported model: the tutorial's test.py done right.

The ONNX backend never imports torch, so one image is answered in well under a second. Each input
file succeeds or fails on its own: a bad file gets a message, the good ones are still predicted.
Files in folders named after a class (a test set sorted by class) are also scored against it.
"""

from __future__ import annotations

import contextlib
import decimal
import errno
import io
import itertools
import logging
import math
import operator
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

import numpy as np
from PIL import Image

from visionpipe import fsutil, logs, paths, streams
from visionpipe.folder_classes import (
    FolderClasses,
    format_accuracy,
    format_outside,
    near_misses,
    score,
)
from visionpipe.fsutil import (
    CsvRows,
    DiskFullError,
    atomic_open,
    atomic_path,
    json_pretty,
    write_json,
)
from visionpipe.grids import Layout, Line, captioned_grid
from visionpipe.images import BadImageError, decode_rgb, read_image_file, to_model_input
from visionpipe.inputs import Inputs, collect_inputs
from visionpipe.names import one_line
from visionpipe.onnxrt import open_exported

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    file: str
    top: list[dict[str, Any]]  # [{"class": name, "probability": p}, ...] best first
    error: str | None = None


class Backend(Protocol):
    path: Path  # the model file it read
    classes: list[str]
    image_size: int

    def logits(self, batch: np.ndarray) -> np.ndarray: ...


class OnnxBackend:
    def __init__(self, path: Path) -> None:
        self.path = paths.require(path, "export")
        model = open_exported(self.path)
        self.session, self.classes, self.image_size = model.session, model.classes, model.image_size
        self.input_name = self.session.get_inputs()[0].name

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]


class TorchBackend:
    def __init__(self, path: Path) -> None:
        import torch

        from visionpipe.modelfile import load_model

        self.torch, self.path = torch, path
        # A file that is not a visionpipe model.pt raises modelfile.ModelFileError, in one line.
        self.model, info = load_model(path)
        self.model = self.model.to(memory_format=torch.channels_last)  # 2x faster on CPU
        self.classes = info.classes
        self.image_size = info.image_size

    def logits(self, batch: np.ndarray) -> np.ndarray:
        x = self.torch.from_numpy(batch).contiguous(memory_format=self.torch.channels_last)
        with self.torch.inference_mode():
            return self.model(x).numpy()


def open_backend(kind: str, model: Path | None = None) -> Backend:
    """The `kind` backend for `model`, by default the model file the pipeline writes for it."""
    model = Path(model) if model is not None else None  # a notebook passes the path as typed
    if kind == "onnx":
        return OnnxBackend(model or paths.default_model(paths.ONNX_MODEL))
    if kind == "torch":
        if model is not None and model.suffix.lower() == ".onnx":
            # Its .pt beside it may be another run's (two artifacts, versioned apart).
            raise ValueError(
                f"--backend torch reads a .pt state_dict; {model} is an ONNX model: give "
                f"--backend onnx, or the .pt file (--model {model.with_suffix('.pt')})"
            )
        return TorchBackend(model or paths.default_model(paths.MODEL))
    raise ValueError(f"Invalid backend '{kind}'. Only onnx and torch are supported.")


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def top_k(probs: np.ndarray, classes: list[str], k: int) -> list[dict[str, Any]]:
    """The `k` most probable classes of one image's probabilities, best first (ties in class
    order), each probability to 6 significant digits (not decimals: a thousand classes' small
    ones keep theirs, 1.37e-06): what predict and serve both report."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"class": classes[i], "probability": float(f"{probs[i]:.6g}")} for i in order]


def predict_files(
    files: Iterable[str | Path], backend: Backend, topk: int = 3, batch_size: int = 64
) -> list[Prediction]:
    """Top-k predictions per file, in input order; undecodable files get an error entry."""
    if isinstance(files, (str, bytes, Path)):  # a str would be predicted a character at a time
        raise TypeError(f"predict_files takes a list of files, not one: [{files!r}]")
    if not all(_whole(n) >= 1 for n in (topk, batch_size)):  # numpy's integers are whole too
        raise ValueError(
            f"topk and batch_size must be whole numbers of at least 1, not {topk} and {batch_size}"
        )
    topk, batch_size = int(topk), int(batch_size)
    files = list(files)
    k = min(topk, len(backend.classes))
    results: list[Prediction] = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        arrays, ok = [], []
        slots: list[Prediction] = []
        for path in chunk:
            try:
                arrays.append(read_image_file(path, backend.image_size))
                ok.append(len(slots))
                slots.append(Prediction(str(path), []))
            except BadImageError as exc:
                slots.append(Prediction(str(path), [], exc.reason))
        if arrays:
            batch = to_model_input(arrays)
            probs = softmax(backend.logits(batch).astype(np.float64))
            for slot, p in zip(ok, probs, strict=True):
                slots[slot].top = top_k(p, backend.classes, k)
        results += slots
    return results


class Progress:
    """How many of `total` photos are predicted, on a terminal's stderr, rewritten in place at
    most twice a second: a collection of thousands takes minutes, which would pass in silence.
    Nothing where stderr is no terminal (a pipe, a log file, a CI job)."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.total, self.shown_at, self.width = total, 0.0, 0
        self.on = total > PROGRESS_MIN and _is_terminal(self.stream)

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if self.on and done < self.total and now - self.shown_at >= 0.5:
            text = f"predicted {done:,} of {self.total:,} photos"
            self.stream.write(f"\r{text}")
            self.stream.flush()
            self.shown_at, self.width = now, len(text)

    def clear(self) -> None:
        """Blank the count's line, for what comes next (the table, "interrupted")."""
        if self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0


PROGRESS_MIN = 500  # photos: fewer take a few seconds at most


def _predict_showing_progress(
    files: list[Path], backend: Backend, topk: int, batch_size: int
) -> tuple[list[Prediction], KeyboardInterrupt | None]:
    """The predictions of `files`, batch by batch, counted on a terminal; and the Ctrl-C (or
    SIGTERM, SIGHUP) that stopped them, with those of the batches done kept: an hour's
    collection is not lost to a stop at its last minute."""
    progress, done = Progress(len(files)), []
    try:
        for start in range(0, len(files), batch_size):
            done += predict_files(files[start : start + batch_size], backend, topk, batch_size)
            progress(len(done))
        return done, None
    except KeyboardInterrupt as exc:
        if not done:
            raise  # nothing to keep: the plain "interrupted"
        return done, exc
    finally:
        progress.clear()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def _whole(n: object) -> int:
    """`n` as an int if it is a whole number's type (int, numpy's), else 0; not a bool."""
    try:
        return 0 if isinstance(n, bool) else operator.index(n)  # type: ignore[arg-type]
    except TypeError:
        return 0


def predict_command(
    specs: list[str],
    backend: str = "onnx",
    model: Path | None = None,
    topk: int = 3,
    batch_size: int = 64,
    json_path: Path | None = None,
    csv_path: Path | None = None,
    grid_path: Path | None = None,
    fix: str = "each is an ERROR line of the table",
    unscored: list[str] | None = None,
    skip_bad: str | None = None,
    model_hint: str = "",
) -> int:
    """`visionpipe predict` and the predict stage: open the model (the pipeline's for `backend`
    by default; `model_hint` follows the error where it cannot be used), predict every file the
    specs name, print the table (and the accuracy on files in folders named after a class),
    write the files asked for. `unscored`: specs predicted first, whose folders are never
    classes (the stage's data/samples). The exit code: 2 if the model cannot be used, 1 if any
    input failed (the message ends with `fix`), else 0. `skip_bad`: the setting under which a
    file that is there but no usable image is a warning, not a failure."""
    if (opened := _opened_or_said(backend, model, model_hint)) is None:
        return 2
    topk = min(topk, len(opened.classes))  # the CSV's columns: none left empty in every row
    seen: dict[Path, str] = {}  # a sample that predict.inputs names too comes once
    samples, inputs = collect_inputs(unscored or [], seen), collect_inputs(specs, seen)
    asked = {
        k: v for k, v in (("--json", json_path), ("--csv", csv_path), ("--grid", grid_path)) if v
    }
    elsewhere = _files(asked)  # before a closed pipe's stdout is pointed at /dev/null
    if (clash := _overwritten(asked, inputs.files, opened.path)) is not None:
        log.error("%s", clash)
        return 2
    not_scored = {str(f) for f in samples.files} | {file for file, _ in samples.errors}
    files = samples.files + inputs.files
    predicted, stopped = _predict_showing_progress(files, opened, topk, batch_size)
    # What a stop kept is written whole: a second signal (`uv run` passes one on) waits.
    with logs.stops_held(stopped is not None):
        preds = _in_order(samples, inputs, predicted)
        labels = _folder_labels(preds, inputs.tops, FolderClasses(opened.classes), not_scored)
        scored = [p for p in predicted if p.file not in not_scored]
        skipped = _skipped(preds) if skip_bad else set()
        out = _table_stream(json_path, csv_path, grid_path)
        try:
            # The files first: a reader that stops (`| head -1`) stops this command after them.
            written = _write_outputs(preds, labels, topk, json_path, csv_path, grid_path)
            _print_table(_table_text(preds, skipped, not_scored, json_path), out)
        except BrokenPipeError:  # the reader stopped: the failures are still said, on stderr
            _report_failures(preds, skipped, skip_bad, fix)
            if stopped is None:
                raise
            logs.stdout_gone()  # a Ctrl-C stops `| tee` too: the stop is what to say
            return _said_stopped(stopped, len(predicted), len(files), elsewhere, table=False)
        _print_accuracy(scored, labels, opened.classes, inputs.tops)
        _warn_trained_on(scored, labels, opened.path)
        _warn_nonfinite(predicted)
        failed = _report_failures(preds, skipped, skip_bad, fix)
        if stopped is not None:
            return _said_stopped(stopped, len(predicted), len(files), bool(asked))
    return 1 if failed or not written else 0


def _opened_or_said(backend: str, model: Path | None, hint: str = "") -> Backend | None:
    """The model opened for `backend`, or None where it cannot be, said why (and `hint`)."""
    try:
        return open_backend(backend, model)
    except (FileNotFoundError, ValueError) as exc:
        log.error("%s%s", exc, f"; {hint}" if hint else "")
        return None


def _in_order(samples: Inputs, inputs: Inputs, predicted: list[Prediction]) -> list[Prediction]:
    """Every entry in the order named: the samples', then the inputs'; the unusable ones where
    their specs were, as error entries. `predicted` may stop short (a Ctrl-C)."""
    n = len(samples.files)
    return [
        *samples.in_order(predicted[:n], [Prediction(f, [], why) for f, why in samples.errors]),
        *inputs.in_order(predicted[n:], [Prediction(f, [], why) for f, why in inputs.errors]),
    ]


def _table_stream(*outputs: Path | None) -> TextIO:
    """Where the table goes: stdout, or stderr where `--json -` or `--csv -` (or /dev/stdout)
    take standard output for themselves."""
    named = [p for p in outputs if p is not None]
    to_stdout = any(p == STDOUT or streams.standard_stream(p) == 1 for p in named)
    return sys.stderr if to_stdout else sys.stdout


def _said_stopped(
    stopped: KeyboardInterrupt, done: int, total: int, files: bool, table: bool = True
) -> int:
    """Say that a stop cut the predictions short, and what kept those predicted: the table
    (unless its reader stopped too) and the `files` asked for; its exit status."""
    text, code = logs.stop_text(stopped)
    if table:
        kept = "the table and the files asked for hold those" if files else "the table holds those"
    elif files:  # a Ctrl-C stops `| tee` too
        kept = "the files asked for hold those (standard output's reader stopped too)"
    else:
        kept = (
            "none kept: standard output's reader stopped too (a Ctrl-C stops `| tee` as well);"
            " --json or --csv to a file keep what a stopped run predicted"
        )
    print(f"{text} after {done:,} of {total:,} photos: {kept}", file=sys.stderr)
    return code


def _files(asked: dict[str, Path]) -> bool:
    """Whether any of the outputs asked for goes elsewhere than stdout (a file, or stderr, which
    a `| tee` leaves to the terminal)."""
    return any(p != STDOUT and streams.standard_stream(p) != 1 for p in asked.values())


# The stage's samples (one a class) shown in its log at most: a thousand classes' lines would push
# the warnings and the accuracy of the stages before it off the screen.
SHOWN_SAMPLES = 30


def _table_text(
    preds: list[Prediction], skipped: set[str], samples: set[str], json_path: Path | None
) -> str:
    """The table of `preds`: of the `samples` (first, unscored), the first SHOWN_SAMPLES and a
    line for the rest, which the JSON file holds; every other file's line."""
    n = sum(p.file in samples for p in preds)
    if n <= SHOWN_SAMPLES:
        return format_table(preds, skipped)
    where = f": {json_path}" if json_path is not None else ""
    rest = f"... and {n - SHOWN_SAMPLES:,} more samples, one a class{where}"
    parts = [format_table(preds[:SHOWN_SAMPLES], skipped), rest, format_table(preds[n:], skipped)]
    return "\n".join(part for part in parts if part)


def _print_table(table: str, out: TextIO | None) -> None:
    if out is None:  # stdout closed (`>&-`), with the predictions going to the files named
        return
    with streams.stdout_writes():
        # One write where it fits the pipe: `| head -1` then ends it the same way every time.
        out.write(table + "\n")
        out.flush()


def _warn_nonfinite(predicted: list[Prediction]) -> None:
    """Say so when the model's outputs are NaN: a diverged model still ranks classes, by nothing."""
    nan = [p for p in predicted if any(not math.isfinite(t["probability"]) for t in p.top)]
    if nan:
        log.warning(
            "the model gives non-finite outputs (NaN) for %d of %d images: its training "
            "diverged (metrics/train.json: diverged), and their classes mean nothing",
            len(nan),
            len(predicted),
        )


def _skipped(preds: list[Prediction]) -> set[str]:
    """The failed inputs a skip setting passes over: files that exist (a truncated photo, a
    non-image, a broken link in a folder); a path that does not exist, or a folder of no image,
    is a mistake in the specs."""
    return {p.file for p in preds if p.error is not None and _is_file_entry(p.file)}


def _report_failures(
    preds: list[Prediction], skipped: set[str], skip_bad: str | None, fix: str
) -> int:
    """Log the inputs that failed, those `skipped` (under the setting `skip_bad`) in a warning;
    how many of them fail the run."""
    failed = [p for p in preds if p.error is not None]
    if passed_over := sum(p.file in skipped for p in failed):
        were = (
            "is not a usable image and was"
            if passed_over == 1
            else "are not usable images and were"
        )
        log.warning(
            "%d of %d inputs %s skipped (%s; each is a SKIPPED line of the table above)",
            passed_over, len(preds), were, skip_bad,
        )  # fmt: skip
    if hard := len(failed) - passed_over:
        # Named here, on stderr, too: the table's ERROR lines may have gone to a file or a pipe.
        named = [f"{_shown(p.file)} ({p.error})" for p in failed if p.file not in skipped]
        more = f", and {hard - FAILED_NAMED} more" if hard > FAILED_NAMED else ""
        shown = "; ".join(named[:FAILED_NAMED]) + more
        log.error("%d of %d inputs failed: %s; %s", hard, len(preds), shown, fix)
    return hard


def _shown(file: str) -> str:
    """A file name on one line; an empty argument as ''."""
    return one_line(file) or "''"


FAILED_NAMED = 3  # failed inputs named in the summary line; the table names every one


def _is_file_entry(file: str) -> bool:
    """Whether `file` names something there other than a folder (a dangling link counts)."""
    return os.path.lexists(file) and not os.path.isdir(file)


def _folder_labels(
    preds: list[Prediction], tops: dict[str, str], lookup: FolderClasses, not_scored: set[str]
) -> dict[str, str]:
    """file -> the class its nearest folder below the one named is named after. Every entry, a
    broken link or an undecodable file too, carries its folder's class."""
    found = ((p.file, lookup.of(p.file, tops.get(p.file))) for p in preds)
    return {file: c for file, c in found if c is not None and file not in not_scored}


def _overwritten(outputs: dict[str, Path], files: list[Path], model: Path) -> str | None:
    """Why writing `outputs` (flag -> path) would overwrite one of the photos `files`, the
    `model` predicting, or a model or data the pipeline wrote; None if it would not."""
    named = {
        key: (flag, path)
        for flag, path in outputs.items()
        if path != STDOUT
        for key in _identities(fsutil.through_link(path))
    }
    for path in [model, *files]:
        found = next((named[k] for k in _identities(path) if k in named), None)
        if found is None or not _same_file(fsutil.through_link(found[1]), path):
            continue
        flag, out = found
        same = "" if out == path else f" ({path})"
        what = "the model predicting" if path == model else "a file being predicted"
        return f"{flag} {out} names {what}{same}: give the output another name"
    for flag, out in outputs.items():
        if out != STDOUT and paths.pipeline_file(fsutil.through_link(out)):
            return (
                f"{flag} {out} names one of the pipeline's, DVC's, git's or uv's own files"
                f" ({paths.guarded_names()}): give the output a name of its own, in"
                " predictions/ say"
            )
    return None


def _identities(path: Path) -> list[tuple[Any, ...]]:
    """What tells two names of one file apart from two files: its device and inode where it
    exists, and its name in any case in its folder (a case-insensitive disk, macOS's, a Windows
    share, an exFAT card, holds A.JPG as a.jpg, and its FUSE driver may give each name an inode
    of its own; `_same_file` tells)."""
    keys: list[tuple[Any, ...]] = []
    with contextlib.suppress(OSError):
        st = os.stat(path)
        keys.append((st.st_dev, st.st_ino))
    try:
        folder: Any = os.stat(path.parent)
        folder = (folder.st_dev, folder.st_ino)
    except OSError:
        folder = os.path.realpath(path.parent)
    # Such disks map case letter by letter (ß stays ß, not SS): a one-to-one upper case.
    name = "".join(c.upper() if len(c.upper()) == 1 else c for c in path.name)
    return [*keys, (folder, name)]


def _same_file(out: Path, photo: Path) -> bool:
    """Whether `out`, whose identity matched `photo`'s, names that very file: one inode, or a
    name in another case that the folder finds (it exists) without listing it (a disk whose
    names ignore case). On a disk that tells case, A.png is a file of its own or none yet."""
    with contextlib.suppress(OSError):
        if os.path.samefile(out, photo):
            return True
    if out.name == photo.name or not os.path.lexists(out):
        return out.name == photo.name
    try:
        return out.name not in os.listdir(out.parent)
    except OSError:
        return True  # unlistable: the safe side is to refuse


def _print_accuracy(
    predicted: list[Prediction],
    labels: dict[str, str],
    classes: list[str],
    tops: dict[str, str] | None = None,
) -> None:
    """The accuracy line, when a predicted file sits in a folder named after a class (`labels`:
    file -> that class), under the table; a warning names the other files' folders. On stderr:
    the table on stdout stays one line per file for the scripts that read it."""
    top = ((p.file, p.top[0]["class"]) for p in predicted if p.error is None)
    accuracy = score(top, labels, classes)
    if accuracy is None:
        read = (p.file for p in predicted if p.error is None)  # as score counts them
        if (missed := near_misses(read, classes, tops)) is not None:
            log.warning("%s", missed)
        return
    k = max((len(p.top) for p in predicted if p.error is None), default=1)
    # Among the k first: scored as right where the folder's class is one of them.
    in_top = (
        (p.file, labels[p.file] if _among(labels.get(p.file), p.top) else p.top[0]["class"])
        for p in predicted
        if p.error is None
    )
    top = score(in_top, labels, classes) if 1 < k < len(classes) else None  # else all, or top-1
    print(format_accuracy(accuracy, top and (k, top.right)), file=sys.stderr)
    if (outside := format_outside(accuracy, classes)) is not None:
        log.warning("%s", outside)


def _warn_trained_on(predicted: list[Prediction], labels: dict[str, str], model: Path) -> None:
    """Warn where photos scored (in class-named folders) are ones the project's own model was
    trained or validated on, found in its data.source folder by data/processed/split.csv: the
    folder accuracy then says how well it learned them, not how it does on new photos."""
    scored = [p.file for p in predicted if p.error is None and p.file in labels]
    own = paths.own_model(model) if scored else None  # no accuracy line: nothing to read
    held = _held_names(own[0]) if own is not None else None
    if held is None:
        return
    source, names = held
    seen = sum(_named_in(Path(file), source, names) for file in scored)
    if seen:
        log.warning(
            "%d of the %d photos scored are in the train or validation split of %s, which %s"
            " learned from (%s): their accuracy is not one on new photos; the test split's is"
            " test_acc in `uv run dvc metrics show`",
            *(seen, len(scored), source, model, own[0] / paths.SPLIT_RECORD),
        )


def _held_names(root: Path) -> tuple[Path, set[str]] | None:
    """The folder the project's data was last made from (dvc.lock's data.source, found as
    download found it: this machine's launch.data_root, `~` and variables), and the names its
    split.csv puts in the train and validation splits; None where it is an archive or URL, or
    where either cannot be read."""
    import csv

    try:
        import yaml  # the pipeline's: a predict-only install has no project to ask

        locked = paths.stages_of(root / paths.DVC_LOCK).get("download") or {}
        source = locked["params"]["params.yaml"]["data.source"]  # params.yaml may have moved on
        params = yaml.safe_load((root / "params.yaml").read_text("utf-8"))
        base = paths.user_path((params.get("launch") or {}).get("data_root") or "", "data_root")
        folder = root / base / paths.user_path(source, "data.source")  # absolute: itself
    except (ImportError, OSError, UnicodeError, AttributeError, KeyError, TypeError, ValueError):
        return None
    if "://" in str(source) or not folder.is_dir():  # an archive's photos cannot be matched
        return None
    try:
        with open(root / paths.SPLIT_RECORD, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeError, csv.Error):
        return None
    names = {r["file"] for r in rows if r.get("split") in ("train", "val")}
    return Path(os.path.realpath(folder)), names


def _named_in(file: Path, source: Path, names: set[str]) -> bool:
    """Whether `file`, inside `source`, is one of `names` (split.csv's, written below the folder
    holding every image: a suffix of its path there). Its folder's links are followed, not its
    own: a `dvc add`ed photo under cache.type symlink is a link into the cache."""
    try:
        parts = (Path(os.path.realpath(file.parent)) / file.name).relative_to(source).parts
    except ValueError:
        return False
    return any("/".join(parts[k:]) in names for k in range(len(parts)))


def _among(label: str | None, top: list[dict[str, Any]]) -> bool:
    return label is not None and any(t["class"] == label for t in top)


def _records(preds: list[Prediction], labels: dict[str, str]) -> list[dict[str, Any]]:
    """The JSON entries: each prediction's fields, and the class its folder is named after."""
    return [{**asdict(p), "folder_class": labels.get(p.file)} for p in preds]


def _write_outputs(
    preds: list[Prediction],
    labels: dict[str, str],
    topk: int,
    json_path: Path | None,
    csv_path: Path | None,
    grid_path: Path | None,
) -> bool:
    """Write the files asked for, then those for stdout or stderr (whose reader may stop
    reading: BrokenPipeError goes to the caller); False, after one error line naming it, if one
    cannot be."""
    outputs = (
        ("--json", json_path, lambda dest: write_json(dest, _records(preds, labels))),
        ("--csv", csv_path, lambda dest: write_csv(dest, preds, topk, labels)),
        ("--grid", grid_path, lambda dest: write_grid(dest, preds, labels)),
    )
    written, for_streams = True, []
    for flag, dest, write in outputs:
        if not dest:
            continue
        if dest == STDOUT or (flag != "--grid" and streams.standard_stream(dest) is not None):
            for_streams.append((flag, dest))
            continue
        if flag == "--grid" and all(p.error for p in preds):
            log.error("--grid %s not written: no input could be predicted", dest)
            continue  # the failed inputs make the exit code 1
        if streams.discarded(dest):  # nothing to make
            continue
        target = fsutil.through_link(Path(dest))
        if (broken := _dangling_link(Path(dest), target)) is not None:  # `>` makes no folder
            log.error("cannot write %s %s: %s (a disk not mounted?)", flag, dest, broken)
            written = False
            continue
        try:
            write(target)
        except DiskFullError:
            raise  # its message names the file and the remedy; the caller prints it
        except OSError as exc:  # the others are still written, each failure named
            log.error("cannot write %s %s: %s", flag, dest, _unwritable(Path(dest), exc))
            written = False
    for flag, dest in for_streams:  # a file name not UTF-8 keeps its escaped bytes, as in a file
        fd = 1 if dest == STDOUT else streams.standard_stream(dest) or 1
        # On a terminal a name's control characters would act on it (an escape sequence, a
        # newline splitting the row), not show: escaped there, as in the table.
        text = _output_text(preds, labels, topk, flag, os.isatty(fd))
        streams.write_stream(fd, text.encode("utf-8", "backslashreplace"))
    return written


def _dangling_link(dest: Path, target: Path) -> str | None:
    """Why `dest` (written at `target`) lies in a folder that is not there because a link leads
    nowhere: the file's own link, or one of its folders'; None otherwise."""
    if target != dest and not target.parent.is_dir():
        return f"it is a link to {os.readlink(dest)}, whose folder does not exist"
    folder = next((f for f in target.parents if f.is_symlink() and not f.exists()), None)
    if folder is not None:
        return f"its folder {folder} is a link to {os.readlink(folder)}, which does not exist"
    return None


def _unwritable(dest: Path, exc: OSError) -> str:
    """Why `dest` cannot be written, in terms of the path given: the OSError names a temporary
    file beside it or one of its parents."""
    if dest.is_dir():
        return f"{dest} is a folder: name a file in it"
    blocking = next((p for p in dest.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        return f"{blocking} is a file, not a folder"
    if exc.errno == errno.EFBIG:  # no other folder of this user's helps there
        return fsutil.refused_reason(exc)
    if exc.errno == errno.EROFS:
        return "read-only filesystem: give a file on a writable disk"
    if exc.errno == errno.EPIPE:  # a named pipe whose reader went away
        return "its reader stopped reading before the end"
    return f"{exc.strerror or exc}; give a file in a folder this user can write"


STDOUT = Path("-")  # `--json -`, `--csv -`: standard output, as curl -o - and tar -f - take it


def _output_text(
    preds: list[Prediction], labels: dict[str, str], topk: int, flag: str, shown: bool = False
) -> str:
    """What --json or --csv writes, as text; `shown`: on a terminal (JSON escapes control
    characters itself, CSV does not)."""
    if flag == "--json":
        return json_pretty(_records(preds, labels))
    out = io.StringIO()
    _csv_rows(out, preds, topk, labels, one_line if shown else str)
    return out.getvalue()


TAB_SUFFIXES = (".tsv", ".tab")  # --csv names whose readers split at tabs


def write_csv(
    dest: Path, preds: list[Prediction], topk: int, labels: dict[str, str] | None = None
) -> None:
    with atomic_open(dest) as f:
        # A .tsv asked for is read with tabs (pandas' sep="\t", a spreadsheet's import).
        tabs = dest.suffix.lower() in TAB_SUFFIXES
        _csv_rows(f, preds, topk, labels or {}, delimiter="\t" if tabs else ",")


def _csv_rows(
    f: Any,
    preds: list[Prediction],
    topk: int,
    labels: dict[str, str],
    name: Callable[[str], str] = str,
    delimiter: str = ",",
) -> None:
    w = CsvRows(f, delimiter)
    header = ["file"]
    for i in range(1, topk + 1):
        header += [f"class_{i}", f"probability_{i}"]
    w.writerow([*header, "error", "folder_class"])
    for p in preds:
        # A name that is not UTF-8 (Python holds its bytes escaped) gets U+FFFD for those
        # bytes, as a terminal shows it: the CSV stays UTF-8; the JSON keeps the exact name.
        row: list[Any] = [
            name(p.file.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
        ]
        for i in range(topk):
            t = p.top[i] if i < len(p.top) else {"class": "", "probability": ""}
            row += [t["class"], t["probability"]]
        w.writerow([*row, p.error or "", labels.get(p.file, "")])


def write_grid(
    dest: Path,
    preds: list[Prediction],
    labels: dict[str, str] | None = None,
    cell: int = 128,
    cols: int = 5,
    limit: int = 100,
) -> None:
    """A labelled contact sheet of the predicted images that decoded, in their order; of more
    than `limit`, the wrong guesses first. A file in a folder named after a class (`labels`) shows
    its prediction green when it is that class, red with "(that class)" before its name when not,
    as evaluate's misclassified grid does."""
    decoded = [p for p in preds if p.error is None]
    labels = labels or {}
    shown = decoded
    if len(decoded) > limit:
        wrong = [labels.get(p.file) not in (None, p.top[0]["class"]) for p in decoded]
        shown = [decoded[i] for i in _grid_order(decoded, labels, wrong)[:limit]]
        # A warning, so that the CLI (which shows warnings and errors only) says it too.
        log.warning(
            "%s shows %d of the %d predictions (%s)",
            dest,
            limit,
            len(decoded),
            f"the {sum(wrong)} wrong ones first, each class's in turn"
            if any(wrong)
            else "the first ones",
        )
    # Decoded for the cell size, as predicting decoded them for the model's: a JPEG at reduced
    # scale, so a photo too large to decode whole (200 megapixels) shows as it was predicted.
    images = (decode_rgb(Path(p.file).read_bytes(), p.file, cell) for p in shown)
    captions = [_grid_caption(p, labels.get(p.file)) for p in shown]
    sheet = captioned_grid(images, captions, Layout(cell, cols, lines=2, font_size=13))
    buf = io.BytesIO()
    # The format its name says (cli.GRID_SUFFIXES); PNG for any other.
    sheet.save(buf, format=Image.registered_extensions().get(Path(dest).suffix.lower(), "PNG"))
    if (fd := streams.standard_stream(dest)) is not None:  # `--grid grid.png > grid.png`
        streams.write_stream(fd, buf.getvalue())
        return
    with atomic_path(dest) as tmp:
        tmp.write_bytes(buf.getvalue())


def _grid_order(decoded: list[Prediction], labels: dict[str, str], wrong: list[bool]) -> list[int]:
    """The indexes of `decoded` as a sheet of some of them shows them: the wrong guesses first,
    one of each folder class in turn (a collection sorted by class would fill the sheet with
    its first class's), then the right ones; each class's in the order given."""
    by_class: dict[str, list[int]] = {}
    for i, p in enumerate(decoded):
        if wrong[i]:
            by_class.setdefault(labels[p.file], []).append(i)
    turns = itertools.zip_longest(*by_class.values())
    return [i for turn in turns for i in turn if i is not None] + [
        i for i in range(len(decoded)) if not wrong[i]
    ]


def _grid_caption(p: Prediction, label: str | None) -> list[Line]:
    name = Path(p.file).name
    guess, probability = p.top[0]["class"], f" {percent(p.top[0]['probability'], 0)}"
    if label is None:
        return [(guess, "black", probability), (name, "gray")]
    if guess == label:
        return [(guess, "darkgreen", probability), (name, "gray")]
    # Said in words too, not by colour alone (red and green look alike to one man in twelve).
    return [(guess, "firebrick", probability), (f"is {label}: {name}", "gray")]


def percent(probability: float, places: int) -> str:
    """`probability` as a percentage with `places` decimals, and more below 1%, down to two
    significant digits: among 1,000 classes every guess of a young model is near 0.1%, and
    `0.1%` five times over would tell them apart no more than `0%` does."""
    value = probability * 100
    if 0 < value < 10**-MOST_PLACES:
        return f"<{_half_up(10**-MOST_PLACES, MOST_PLACES)}%"
    if 0 < value < 1:
        more = 1 - math.floor(math.log10(value))
        if float(_half_up(value, more)) * 10**more >= 100:  # 0.0996 rounds up to 0.100
            more -= 1
        shown = _half_up(value, max(places, min(MOST_PLACES, more)))
        if float(shown) < 1:  # 0.996% rounds to 1.00: then as any other 1%
            return f"{shown}%"
    # A diverged model's NaN: "n/a", as the serve page and docs/web/visionpipe.mjs show it.
    return f"{_half_up(value, places)}%" if math.isfinite(value) else "n/a"


MOST_PLACES = 8  # decimals of a percentage at most: below 0.00000001%, "<" that


def _half_up(value: float, places: int) -> str:
    """`value` to `places` decimals, a half rounded up, as JavaScript's toFixed rounds the
    serve page's (Python's format rounds a half to even: 0.125 to 0.12, the page's to 0.13)."""
    step = decimal.Decimal(1).scaleb(-places)
    return format(decimal.Decimal(value).quantize(step, rounding=decimal.ROUND_HALF_UP), "f")


def format_table(preds: list[Prediction], skipped: set[str] | frozenset[str] = frozenset()) -> str:
    lines = []
    for p in preds:
        name = _shown(p.file)  # the table's one line per file
        if p.error:
            lines.append(f"{name}: {'SKIPPED' if p.file in skipped else 'ERROR'} {p.error}")
        else:
            tops = ", ".join(f"{t['class']} {percent(t['probability'], 1)}" for t in p.top)
            lines.append(f"{name}: {tops}")
    return "\n".join(lines)
