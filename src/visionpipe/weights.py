"""Starting a model from a weights file (model.weights): a torchvision .pth, another run's
models/model.pt, a checkpoint of a wrapped net.

Layers that fit load whole; the classifier's rows are matched to this run's classes by name, so
a head trained for other classes starts fresh rather than answering for the wrong ones; a
visionpipe model.pt trained with other model.* values is refused; a file holding pickled
objects is refused with how to save its weights alone.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionpipe import paths

log = logging.getLogger(__name__)


class WeightsError(ValueError):
    """Starting weights (model.weights, model.pretrained) that cannot be used; the message says
    what to set instead."""


def load_weights_file(
    model: nn.Module,
    path: Path,
    built: tuple[dict[str, Any], int],
    classes: Sequence[str] | None = None,
    head: str | None = None,
) -> list[str]:
    """Load a state_dict file (plain, or an exported visionpipe model.pt) into `model`; returns
    the names of the tensors left as initialised.

    A layer with a tensor whose shape differs (a classifier for another class count) is left as
    initialised, whole. The classifier of a file that names its classes is matched to this run's
    `classes` by name (`match_classifier`). `built`: the model.* values and image size `model`
    was built with, which a visionpipe model.pt's own must match (`check_weights_origin`).
    """
    state, theirs = read_weights_file(path, built)
    own = model.state_dict()
    head = classifier_name(model, len(classes) if classes else None, head, built[1])
    state = match_classifier(state, head, theirs, classes, own)
    # A layer loads whole or not at all: a bias kept beside a freshly drawn weight means nothing.
    mismatched = {_layer(k) for k, v in state.items() if k in own and own[k].shape != v.shape}
    fitting = {
        k: v
        for k, v in state.items()
        if k in own and own[k].shape == v.shape and _layer(k) not in mismatched
    }
    fresh = sorted(set(own) - set(fitting))
    # Nothing fitting means another architecture's file: training would silently start from
    # scratch while the user believes it fine-tunes.
    if not fitting:
        raise WeightsError(
            f"model.weights = '{path}' does not fit this model: {len(fitting)} of the model's "
            f"{len(own)} tensors match by name and shape (unmatched: {fresh[:5]} ...); give "
            "weights of the same model.name, or set model.weights: null"
        )
    log.info(
        "model.weights: %d of %d tensors loaded from %s%s",
        len(fitting),
        len(own),
        path,
        f"; left fresh: {', '.join(fresh)}" if fresh else "",
    )
    model.load_state_dict(fitting, strict=False)
    return fresh


SPLIT_KEYS = ("seed", "test_fraction", "val_fraction")  # data.* keys that draw the splits
FLAT = "flat"  # the layout (data/processed/meta.json) whose test split is drawn too
# split_plan's, which a test holds equal: that preprocess module is no code of train's to load.
DEFAULT_TEST_FRACTION = 0.2


def warn_if_other_split(
    path: Path, data: dict[str, Any], classes: Sequence[str], layout: str = FLAT
) -> None:
    """Warn when the visionpipe model.pt at `path` was trained on the same dataset and classes
    with its splits drawn otherwise (data.seed, the fractions): photos it trained on may be in
    this run's test split (a flat collection's, drawn too) or validation split (drawn from the
    training images in every layout), whose scores then read too well."""
    try:  # mmap: the metadata without reading the tensors again
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # read and checked by load_weights_file already; a plain file says nothing
        return
    meta = saved.get("meta") if isinstance(saved, dict) else None
    theirs = (meta.get("params") or {}).get("data") if isinstance(meta, dict) else None
    if not isinstance(theirs, dict) or theirs.get("dataset") != data.get("dataset"):
        return
    if not set(meta.get("classes") or ()) & set(classes):
        return
    # A dataset's own test folder is no draw: only the validation images are drawn there.
    keys = SPLIT_KEYS if layout == FLAT else ("seed", "val_fraction")
    differ = [k for k in keys if k in theirs and _drawn(theirs, k) != _drawn(data, k)]
    if differ:
        held_out = "test or validation" if layout == FLAT else "validation"
        log.warning(
            "model.weights = '%s' was trained on splits drawn with %s; this run's are drawn with"
            " %s: images it trained on may be among this run's %s images, whose scores then"
            " read too well (set %s as they were to score it on images it never saw)",
            path,
            ", ".join(f"data.{k}: {json.dumps(theirs[k])}" for k in differ),
            ", ".join(f"data.{k}: {json.dumps(data.get(k))}" for k in differ),
            held_out,
            ", ".join(f"data.{k}" for k in differ),
        )


def _drawn(data: dict[str, Any], key: str) -> Any:
    """data.`key` as the split is drawn with it: test_fraction null is the default share."""
    value = data.get(key)
    return DEFAULT_TEST_FRACTION if key == "test_fraction" and value is None else value


# Prefixes that wrappers put before a net's own names: DDP and DataParallel, torch.compile, and
# visionpipe's Classifier.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "net.")


def read_weights_file(
    path: Path, built: tuple[dict[str, Any], int]
) -> tuple[dict[str, torch.Tensor], list[str] | None]:
    """The bare net's state_dict in the file at `path`, and the class names it was trained for
    (None where the file does not say). A visionpipe model.pt is checked against `built`."""
    if not path.is_file():
        hint = ""
        if path.resolve() == paths.MODEL.resolve():
            # The train stage's own output: DVC deletes it before the stage runs.
            hint = (
                f" (DVC removes {paths.MODEL} before train runs: copy it elsewhere first, "
                f"e.g. cp {paths.MODEL} ../start.pt, and point model.weights there)"
            )
        elif not path.is_absolute():
            # Queued and --temp experiments run in a temporary copy of the project.
            hint = (
                f" (looked for as {path.resolve()}: a queued or --temp experiment runs in a"
                " temporary copy of the project, where a relative path names another file; give"
                " it absolute)"
            )
        raise FileNotFoundError(
            f"model.weights = '{path}' does not exist{hint}; give the path of a state_dict file "
            "(torchvision .pth, or a visionpipe models/model.pt), or set model.weights: null"
        )
    state = _load_tensors(path)
    classes = None
    if isinstance(state, dict) and isinstance(state.get("meta"), dict):
        check_weights_origin(path, state["meta"], *built)
        classes = state["meta"].get("classes")
    # A checkpoint dict: visionpipe's model.pt, torchvision's references ({"model": ...}).
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise WeightsError(
            f"model.weights = '{path}' holds a {type(state).__name__}, not a state_dict"
        )
    return _bare_net_state(state), classes


def _check_torch_file(path: Path) -> None:
    """Refuse a file that is no torch.save output: neither its zip nor a legacy pickle."""
    with path.open("rb") as f:
        head = f.read(4)
    if not head:
        raise WeightsError(f"model.weights = '{path}' is empty: copy the weights file again")
    if not head.startswith(b"PK") and head[0] != 0x80:  # a zip; pickle protocol 2 and later
        raise WeightsError(
            f"model.weights = '{path}' is not a PyTorch weights file (torch.save writes a zip; "
            f"this one starts {head!r}); give a state_dict file (.pth, .pt) or a visionpipe "
            "models/model.pt"
        )


def _load_tensors(path: Path) -> Any:
    """torch.load(path) of tensors and plain values only: unpickling other objects runs code."""
    _check_torch_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError) as exc:  # a zip or pickle that ends early
        reason = next(iter(str(exc).splitlines()), "") or type(exc).__name__
        raise WeightsError(
            f"model.weights = '{path}' cannot be read as PyTorch weights ({reason}): a file "
            "cut short, by a download or copy that stopped? Copy it again"
        ) from None
    except pickle.UnpicklingError as exc:
        # torch's message is a page long; the class it refused is what the user recognises.
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found is None:
            raise WeightsError(
                f"model.weights = '{path}' is no state_dict torch can read safely (a pickle of "
                "other data); give a state_dict file (.pth, .pt) or a visionpipe models/model.pt"
            ) from None
        what = found.group(1)
        if runs_code(what):
            raise WeightsError(
                f"model.weights = '{path}': {CODE_PICKLE.format(what=what)}"
            ) from None
        raise WeightsError(
            f"model.weights = '{path}' holds {what} besides tensors, which is not loaded "
            "(torch.load weights_only: unpickling it could run code). If you trust the file, "
            f"save its weights alone: obj = torch.load('{path}', weights_only=False), then "
            "torch.save(obj.state_dict(), 'start.pth') for a saved model or "
            "torch.save(obj['model'], 'start.pth') for a checkpoint dict; point model.weights "
            "at start.pth"
        ) from None


# What a pickle calls to run a program or code, never to rebuild a model: a file naming one was
# made to run it on load, and no weights_only=False should be suggested for it. torch.save's
# protocol 2 names builtins bare (`eval`) and subprocess by its Python 2 name (`commands`).
CODE_MODULES = frozenset(
    {"", "os", "posix", "nt", "subprocess", "commands", "builtins", "__builtin__", "runpy"}
    | {"importlib", "pty", "platform"}
)
CODE_CALLS = frozenset(
    {"system", "popen", "Popen", "call", "check_call", "check_output", "run", "getoutput"}
    | {"getstatusoutput", "spawn", "fork", "forkpty", "popen2", "popen3", "startfile"}
    | {f"spawn{s}" for s in ("l", "le", "lp", "lpe", "v", "ve", "vp", "vpe")}
    | {f"exec{s}" for s in ("l", "le", "lp", "lpe", "v", "ve", "vp", "vpe")}
    | {"posix_spawn", "posix_spawnp", "eval", "exec", "compile", "__import__", "execfile"}
    | {"run_path", "run_module", "import_module", "remove", "unlink", "rmdir", "removedirs"}
)
# And the functions elsewhere that run code, load another pickle, delete or send files, or open
# a browser or a connection: named whole, as a user's own package named `code` or an enum of
# `signal` or `socket` (in a checkpoint's config) is no such call.
CODE_GLOBALS = frozenset(
    {
        f"{m}.{f}"
        for m in ("pickle", "_pickle", "marshal", "dill", "cloudpickle")
        for f in ("loads", "load")
    }
    | {f"shutil.{f}" for f in ("rmtree", "move", "copy", "copy2", "copyfile", "copytree", "chown")}
    | {"shutil.unpack_archive", "shutil.make_archive", "os.kill", "os.killpg", "posix.kill"}
    | {"webbrowser.open", "webbrowser.open_new", "webbrowser.open_new_tab", "socket.socket"}
    | {"socket.create_connection", "socket.create_server", "code.interact", "timeit.timeit"}
    | {"code.InteractiveInterpreter", "code.InteractiveConsole", "code.compile_command"}
    | {
        "ctypes.CDLL",
        "ctypes.PyDLL",
        "ctypes.WinDLL",
        "ctypes.cdll",
        "ctypes.pydll",
        "ctypes.windll",
    }
    | {"ctypes.cast", "ctypes.memmove", "ctypes.memset", "ctypes.string_at", "timeit.repeat"}
    | {"pdb.run", "profile.run", "cProfile.run", "multiprocessing.Process", "threading.Thread"}
    | {"asyncio.create_subprocess_shell", "asyncio.create_subprocess_exec", "runpy._run_code"}
    | {"urllib.request.urlopen", "urllib.request.urlretrieve", "http.client.HTTPConnection"}
    | {"http.client.HTTPSConnection", "smtplib.SMTP", "ftplib.FTP", "telnetlib.Telnet"}
)
CODE_PICKLE = (
    "it calls {what} when unpickled: it was made to run a program on the machine that loads "
    "it, whatever it claims to be. Nothing of it was loaded; delete it and get the weights "
    "from a source you trust"
)


def runs_code(global_name: str) -> bool:
    """Whether a pickle's global (`posix.system`, `eval`) is one that runs code, not a class to
    rebuild (`os.stat_result` is none)."""
    module, _, name = global_name.rpartition(".")
    return global_name in CODE_GLOBALS or (
        name in CODE_CALLS and module.split(".", 1)[0] in CODE_MODULES
    )


def _bare_net_state(state: dict[str, Any]) -> dict[str, Any]:
    """`state` without its wrappers' prefixes and without a Classifier's normalization (the run
    uses its own mean/std)."""
    while True:
        state = {k: v for k, v in state.items() if not k.startswith("normalize.")}
        wrapped = [p for p in WRAPPER_PREFIXES if state and all(k.startswith(p) for k in state)]
        if not wrapped:
            return state
        state = {k.removeprefix(wrapped[0]): v for k, v in state.items()}


def _layer(key: str) -> str:
    """The module a state_dict key belongs to ('fc' of 'fc.weight')."""
    return key.rpartition(".")[0]


def classifier_name(
    net: nn.Module,
    num_classes: int | None = None,
    head: str | None = None,
    image_size: int | None = None,
) -> str:
    """The name of `net`'s classification layer: `head` where its ModelSpec names it (checked),
    else its Linear with one output per class (`num_classes`), else its last Linear. Where
    several have one per class (a hidden layer as wide as the class count, a squeeze-excitation
    block's), the one a forward pass at `image_size` runs last: the modules come in the order
    they were defined, not run."""
    linears = {n: m for n, m in net.named_modules() if isinstance(m, nn.Linear)}
    if head is not None:
        return _checked_head(net, linears, head, num_classes)
    if not linears:
        raise WeightsError(
            f"{type(net).__name__} has no nn.Linear layer to take as its classifier: "
            "model.weights and a train.backbone_lr_scale other than 1 need one (its last layer, "
            "one output per class); a convolutional head (a 1x1 Conv2d) is not told apart from "
            "the rest: leave model.weights at null and train.backbone_lr_scale at 1"
        )
    fitting = [n for n, m in linears.items() if m.out_features == num_classes]
    if len(fitting) > 1 and image_size is not None:
        ran = _run_order(net, fitting, image_size)
        fitting = ran[-1:] or fitting
    if len(fitting) > 1:
        raise WeightsError(
            f"{type(net).__name__} has {len(fitting)} Linear layers with {num_classes} outputs"
            f" ({', '.join(fitting)}): which one classifies is unclear; name it in the model's"
            " ModelSpec in src/visionpipe/models.py (head='NAME', the one whose output is the"
            " net's)"
        )
    return fitting[0] if fitting else list(linears)[-1]


def _checked_head(
    net: nn.Module, linears: dict[str, nn.Module], head: str, num_classes: int | None
) -> str:
    """`head`, a ModelSpec's, where it names a Linear with one output per class."""
    found = linears.get(head)
    if found is None or (num_classes is not None and found.out_features != num_classes):
        fitting = [n for n, m in linears.items() if m.out_features == num_classes]
        raise WeightsError(
            f"the model's ModelSpec names head={head!r}, which is no Linear layer of "
            f"{type(net).__name__} with {num_classes} outputs; those are: "
            f"{', '.join(fitting) or 'none'}"
        )
    return head


def _run_order(net: nn.Module, names: list[str], image_size: int) -> list[str]:
    """Those of `names` (modules of `net`) a forward pass of one blank image runs, in the order
    it runs them; [] where the pass fails. In eval mode, without gradients: nothing changes."""
    modules = dict(net.named_modules())
    order: list[str] = []
    hooks = [modules[n].register_forward_hook(lambda *_, n=n: order.append(n)) for n in names]
    # Each module's own mode, put back as it was: a frozen backbone's BatchNorms stay in eval
    # mode inside a net in train mode.
    modes = {m: m.training for m in net.modules()}
    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    try:
        net.eval()
        with torch.no_grad():
            net(torch.zeros(1, 3, image_size, image_size, device=device))
    except Exception:  # a net that takes no blank image: the names stay unclear, and are said
        return []
    finally:
        for hook in hooks:
            hook.remove()
        for module, mode in modes.items():
            module.training = mode
    return order


def match_classifier(
    state: dict[str, torch.Tensor],
    head: str,
    theirs: Sequence[str] | None,
    ours: Sequence[str] | None,
    own: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """`state` with its classifier's rows for the classes `ours`, taken by name from the file's
    classes `theirs`. A class of ours not among theirs keeps its row of `own`, the model's
    fresh classifier (`_with_new_classes`); with none among theirs, the classifier is left
    out of `state` (so it starts fresh whole): its rows mean other classes, whatever its shape."""
    keys = [k for k in state if _layer(k) == head]
    if not keys or ours is None or theirs is None:
        rows = state[keys[0]].shape[0] if keys else None
        if keys and ours is not None and rows == len(ours):
            log.info(
                "model.weights: the file names no classes; its classifier '%s' has %d rows, "
                "loaded as this run's classes in their order (%s)",
                head,
                rows,
                _names(ours),
            )
        return state
    # One spelling per name: a Mac writes folder names decomposed (NFD), Linux as typed (NFC).
    mine, file = _nfc(ours), _nfc(theirs)
    if mine == file:
        return state
    if set(mine) <= set(file):
        log.info(
            "model.weights: classifier '%s' rows taken by class name: this run's classes (%s) "
            "from the file's (%s)",
            head,
            _names(ours),
            _names(theirs),
        )
        rows = [file.index(name) for name in mine]
        return {**state, **{k: state[k][rows] for k in keys}}
    if set(mine) & set(file) and all(own[k].shape[1:] == state[k].shape[1:] for k in keys):
        return _with_new_classes(state, keys, head, (file, theirs), (mine, ours), own)
    log.info(
        "model.weights: classifier '%s' starts fresh: the file's was trained for other classes "
        "(%s; this run's: %s)",
        head,
        _names(theirs),
        _names(ours),
    )
    return {k: v for k, v in state.items() if k not in keys}


def _with_new_classes(
    state: dict[str, torch.Tensor],
    keys: Sequence[str],
    head: str,
    theirs: tuple[list[str], Sequence[str]],
    ours: tuple[list[str], Sequence[str]],
    own: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """`state` with a classifier of our classes: the file's rows for the classes it knows (by
    NFC name, first of each pair), the fresh ones of `own` for the classes it does not. Adding
    a class to a dataset then fine-tunes from what the model knew of the others."""
    file, mine = theirs[0], ours[0]
    known = [i for i, name in enumerate(mine) if name in file]
    rows = [file.index(mine[i]) for i in known]
    merged = {}
    for k in keys:
        tensor = own[k].clone()
        tensor[known] = state[k][rows].to(tensor.dtype)
        merged[k] = tensor
    new = [ours[1][i] for i in range(len(mine)) if i not in set(known)]
    log.info(
        "model.weights: classifier '%s' rows taken by class name for %d of this run's classes;"
        " fresh for the %d the file does not know (%s; the file's: %s)",
        head,
        len(known),
        len(new),
        _names(new),
        _names(theirs[1]),
    )
    # A class both gone and new is what renaming a class folder looks like: its rows, which the
    # model learned, then go unused and the new name learns from scratch.
    gone = [name for name, key in zip(theirs[1], file, strict=True) if key not in mine]
    if gone:
        log.warning(
            "model.weights: the file's %s not among this run's classes, which include new ones"
            " (%s): if a class folder was renamed, it starts fresh and its old rows go unused;"
            " give it back its old name to keep what the model learned of it",
            f"classes {_names(gone)} are" if len(gone) > 1 else f"class {gone[0]} is",
            _names(new),
        )
    return {**state, **merged}


def _nfc(classes: Sequence[str]) -> list[str]:
    return [unicodedata.normalize("NFC", name) for name in classes]


def _names(classes: Sequence[str], shown: int = 10) -> str:
    """Class names for a log line, the first `shown` of a long list."""
    more = f", ... {len(classes)} in all" if len(classes) > shown else ""
    return ", ".join(classes[:shown]) + more


def check_weights_origin(
    path: Path, meta: dict[str, Any], built: dict[str, Any], image_size: int
) -> None:
    """Refuse a visionpipe model.pt trained with other model.* values that decide what its weights
    mean (`built`'s: model.name, the model's own keys, model.normalize); warn of another size.

    The file's normalization is not loaded (the run's own mean/std are), so weights trained on
    normalized inputs would otherwise see raw [0, 1] pixels, or the reverse, without a word.
    """
    theirs = {"name": meta.get("arch"), **meta.get("arch_params", {})}
    theirs["normalize"] = meta.get("normalize")
    keys = ["name"] if theirs["name"] != built["name"] else list(built)
    differ = [k for k in keys if k in theirs and theirs[k] != built[k]]
    if differ:
        was = ", ".join(f"model.{k}: {_plain(theirs[k])}" for k in differ)
        now = ", ".join(f"model.{k}: {_plain(built[k])}" for k in differ)
        raise WeightsError(
            f"model.weights = '{path}' was trained with {was}; this run has {now}, so its "
            f"weights would compute something else here. Set {was}, or point model.weights at "
            "a model trained with this run's values (or set model.weights: null)"
        )
    if meta.get("image_size") not in (None, image_size):
        log.warning(
            "model.weights = '%s' was trained on %s-pixel images; this run's are %d pixels: "
            "any layer sized by the input starts fresh (the load's INFO line `left fresh` names "
            "them) and the "
            "others see objects at another scale "
            "(set preprocess.image_size: %s to fine-tune at the size it learned)",
            path,
            meta["image_size"],
            image_size,
            meta["image_size"],
        )


def _plain(value: Any) -> str:
    """`value` as params.yaml writes it (true, null, relu)."""
    return value if isinstance(value, str) else json.dumps(value)
