"""models/model.pt, the trained model's file: its one writer and reader.

The file is `{"state_dict": ..., "meta": ...}`: the weights and plain values only, nothing
pickled, loaded with weights_only=True. `ModelInfo` is the meta part: enough to rebuild the
model (`rebuild`) and to use it (class names, input size).
"""

from __future__ import annotations

import pickle
import re
import threading
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionpipe import fsutil, paths
from visionpipe.fsutil import remove_stale_temps, save_torch
from visionpipe.models import Classifier, build_model, unwrap
from visionpipe.weights import CODE_PICKLE, runs_code


class ModelFileError(ValueError):
    """A file that is not a usable visionpipe model.pt; the message names it and says why."""


@dataclass(frozen=True)
class ModelInfo:
    """The plain values saved beside the weights."""

    arch: str  # a name of visionpipe.models.MODELS
    num_classes: int
    image_size: int  # side of the square RGB input, in pixels
    arch_params: dict[str, Any]  # the model's own switches (models.arch_params)
    normalize: bool  # whether mean/std normalization is inside the model
    mean: list[float]  # the train split's per-channel mean and std on the [0, 1] scale (a
    std: list[float]  # channel that never varies: 1, as models.Normalize divides by)
    classes: list[str]
    # The recipe and the params that shaped the model (TrainingParams.run_dict).
    params: dict[str, Any]
    visionpipe_version: str
    torch_version: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, meta: dict[str, Any]) -> ModelInfo:
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in meta]
        if missing:
            raise KeyError(f"model metadata lacks {', '.join(missing)}")
        return cls(**{n: meta[n] for n in names})


def rebuild(info: ModelInfo) -> Classifier:
    """An empty model of the architecture `info` describes (the weights come from the file)."""
    # Pretrained weights are already inside the saved state_dict: never fetch them again.
    switches = {**info.arch_params, "pretrained": False, "weights": None}
    norm = info.normalize
    return build_model(
        info.arch,
        info.num_classes,
        info.image_size,
        switches,
        info.mean if norm else None,
        info.std if norm else None,
    )


def save_model(path: Path, model: nn.Module, info: ModelInfo) -> None:
    """Write the weights and `info` atomically."""
    remove_stale_temps(path)  # a save killed outright left its temporary file: a model's size
    state = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    save_torch(path, {"state_dict": state, "meta": info.to_dict()})


def load_model(
    path: Path, map_location: str | torch.device = "cpu"
) -> tuple[Classifier, ModelInfo]:
    """Load a model.pt (weights_only) and rebuild the model it describes, in eval mode."""
    path = paths.require(Path(path), "train")
    if path.is_dir():
        raise ModelFileError(f"{path}: a folder, not a model.pt file")
    try:
        blob = _torch_load(path, map_location)
    except PermissionError:
        raise  # the file is fine: the command's message for a refused read says what to do
    except (
        RuntimeError,
        ValueError,
        KeyError,
        TypeError,
        EOFError,
        OSError,
        pickle.UnpicklingError,
    ) as exc:  # OSError: torch's reader of a zip archive cut short (EINVAL)
        raise _not_a_model(path, exc) from None
    if not (isinstance(blob, dict) and {"state_dict", "meta"} <= blob.keys()):
        raise _not_a_model(path, KeyError("no state_dict and meta"))
    try:
        info = ModelInfo.from_dict(blob["meta"])
        model = rebuild(info)
        model.load_state_dict(blob["state_dict"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        # The file is this project's format, written by other visionpipe code (an older model
        # layout, a model since removed): not a foreign file, and retraining is the fix.
        raise ModelFileError(
            f"{path}: a visionpipe model.pt this code cannot rebuild ({_reason(exc)}); it was "
            f"written by other visionpipe code: retrain it with 'uv run dvc repro train', or "
            f"predict with its ONNX export, which needs no rebuilding"
        ) from None
    return model.eval(), info


def _torch_load(path: Path, map_location: str | torch.device) -> Any:
    """torch.load, weights only; in the main thread without torch's warnings on a file it then
    refuses (a foreign pickle's protocol), which the refusal naming the file says better.
    catch_warnings swaps the process's filters: other threads leave them alone."""
    if threading.current_thread() is not threading.main_thread():
        return torch.load(path, map_location=map_location, weights_only=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="torch")
        return torch.load(path, map_location=map_location, weights_only=True)


def _reason(exc: BaseException) -> str:
    # torch.load's and load_state_dict's errors span many lines, in terminal bold here and there,
    # and go on after their first sentence with advice (load with weights_only=False) that the
    # refusal is there to keep from being taken.
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).split())
    # c10's internals: where its check failed, and a plea to report the message to PyTorch.
    text = re.sub(
        r"\[enforce fail at [^\]]*\]\s*\.?\s*|\s*\(Could this error message be improved\?.*?\)",
        "",
        text,
    )
    first = re.split(r"(?<=\.)\s+(?=[A-Z])", text, maxsplit=1)[0].rstrip(".")
    # torch's weights-only refusal says what it met further on, past its advice.
    met = re.search(r"WeightsUnpickler error: (.+?)(?:\.\s| Check the documentation|$)", text)
    return f"{type(exc).__name__}: {first[:200]}" + (f": {met[1][:200]}" if met else "")


def _not_a_model(path: Path, exc: BaseException) -> ModelFileError:
    found = re.search(r"GLOBAL (\S+)", str(exc))
    if isinstance(exc, pickle.UnpicklingError) and found:  # torch's advice is a page long
        if runs_code(found[1]):
            return ModelFileError(f"{path}: {CODE_PICKLE.format(what=found[1])}")
        return ModelFileError(
            f"{path}: not a visionpipe model.pt (it holds {found[1]} besides tensors, which is "
            f"not loaded: unpickling it could run code); {_other_file(path)}"
        )
    zipped = fsutil.zip_members(path)
    if zipped is None or _empty(path):  # a copy cut short
        what = (
            "empty"
            if zipped is not None
            else "a zip archive, as torch.save writes, without its end"
        )
        return ModelFileError(
            f"{path}: a damaged or incomplete file ({what}: a copy or download cut short);"
            f" {paths.restore_hint(path)}"
        )
    if not _saved_by_torch(path):  # torch's words on it would be about unpickling
        return ModelFileError(
            f"{path}: not a PyTorch file (torch.save writes a zip archive, or a pickle);"
            f" {_other_file(path)}"
        )
    if zipped and not fsutil.torch_zip(zipped):
        return ModelFileError(
            f"{path}: a zip archive, but not one torch.save wrote (it holds no data.pkl);"
            f" {_other_file(path)}"
        )
    return ModelFileError(
        f"{path}: not a visionpipe model.pt ({_reason(exc)}); {_other_file(path)}"
    )


def _other_file(path: Path) -> str:
    """What to do with a file that is no visionpipe model.pt: pass the train stage's; or, where
    it is that very file (a lesson's torch.save over it, a download that saved an error page),
    get it back: through a linked DVC cache the cache's copy is the one overwritten."""
    if paths.own_model(path) is None:
        return f"pass the {paths.MODEL} the train stage wrote"
    return paths.restore_hint(path)


def _empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def _saved_by_torch(path: Path) -> bool:
    """Whether `path` starts as torch.save's files do: a zip archive, or (the legacy format) a
    pickle of protocol 2 or later."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return True  # unreadable: the error torch gave says why
    return head.startswith((b"PK\x03\x04", b"\x80"))
