"""Every file a stage reads or writes, in one place; dvc.yaml names the same (a test checks)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

from visionpipe.fsutil import dvc_cache_of, is_dvc_cache_file, through_link, unicode_twin

PARAMS = Path("params.yaml")  # what every stage reads its params from (config.load_section)
RAW_DIR = Path("data/raw")  # download: the verified archive + source.json
RAW_INFO = RAW_DIR / "source.json"

PROCESSED_DIR = Path("data/processed")  # preprocess: uint8 arrays per split + stats
SPLITS = ("train", "val", "test")
SPLIT_RECORD = PROCESSED_DIR / "split.csv"  # which source file went to which split, and row
SAMPLES_DIR = Path("data/samples")  # preprocess: one test image per class, as PNG
PREPROCESS_REPORT = Path("metrics/preprocess.json")  # counts, skipped images and why

MODEL = Path("models/model.pt")  # train: state_dict + plain metadata
DVC_LOCK = Path("dvc.lock")  # what DVC recorded of each stage
CHECKPOINT_DIR = Path("checkpoints")  # train: resume state; no DVC output (git-ignored)
TB_DIR = Path("logs/tensorboard")  # train: TensorBoard event files (hold wall-clock times)
LIVE_TRAIN = Path("dvclive/train")  # train: DVCLive's metrics.json and plots/, per epoch
LIVE_MISCLASSIFIED_NAME = "misclassified.png"  # DVCLive image: wrong validation predictions
TRAIN_METRICS = Path("metrics/train.json")  # the run's last figures, stopped early, diverged
TRAIN_TIMINGS = Path("metrics/timings/train.json")  # wall-clock figures of the run
PLOT_EPOCHS = Path("metrics/plots/epochs.csv")  # per-epoch train/val loss and accuracy
PLOT_STEPS = Path("metrics/plots/steps.csv")  # train loss every train.log_every steps

LIVE_EVAL = Path("dvclive/eval")  # evaluate: DVCLive's metrics.json and plots/
EVAL_METRICS = LIVE_EVAL / "metrics.json"  # test loss, accuracy, image count
PER_CLASS = Path("metrics/per_class.json")  # macro-F1; precision, recall, F1, support per class
CONFUSION_MATRIX = Path("metrics/confusion_matrix.json")  # counts, rows actual, columns predicted

ONNX_MODEL = Path("models/model.onnx")
EXPORT_METRICS = Path("metrics/export.json")

QUEUED_COPY = "/.dvc/tmp/exps/"  # where DVC makes a queued run's copy of the project

PREDICTIONS = Path("predictions/predictions.json")
PREDICTION_GRID = Path("predictions/grid.png")


def in_project(path: str | Path) -> Path:
    """`path`, one the stages write (models/model.onnx), here, or else in the project this folder
    is inside (the nearest folder above with a dvc.yaml), as git and dvc find theirs: predicting
    from a subfolder (`cd photos && visionpipe predict *.jpg`) uses the project's model."""
    path = Path(path)  # a notebook passes the path as typed, a str
    # lexists: a link whose DVC cache file is gone is still the project's, to say so
    # `../x.onnx` names a file by where this runs: from the root it would be another file.
    if path.is_absolute() or os.path.lexists(path) or ".." in path.parts:
        return path
    root = project_root()
    return root / path if root is not None and os.path.lexists(root / path) else path


def project_root() -> Path | None:
    """The nearest folder from here up with a dvc.yaml or DVC's .dvc/ (a project that only
    imports models has no dvc.yaml); None outside."""
    return _root_above(Path.cwd())


def default_model(path: Path) -> Path:
    """`in_project(path)` for predict and serve run without --model; outside any project (a
    predict-and-serve install, a model.onnx copied out of one) a missing file says to name it."""
    found = in_project(path)
    if not found.exists() and project_root() is None:
        raise FileNotFoundError(
            f"{path} not found, and {Path.cwd()} is not inside a visionpipe project (no dvc.yaml "
            "here or in a folder above): run from the project, or name the model file "
            "(--model FILE)"
        )
    return found


def rerun(stage: str) -> str:
    """The command that (re)makes what stage `stage` writes, for error messages."""
    return f"run 'uv run dvc repro {stage}'"


def require(path: str | Path, stage: str) -> Path:
    """`path`, which stage `stage` writes, found as `in_project` finds it (a notebook in the
    project's `notebooks/` runs there); a missing one says which command makes it, and, for
    the pipeline's own outputs, how to bring back the last ones DVC recorded."""
    path = Path(path)  # a notebook passes the path as typed, a str
    found = in_project(path)
    if found.exists():
        return found
    if (meant := meant_here(str(path))) is not None:  # a Windows habit (models\model.onnx)
        raise FileNotFoundError(f"{path} not found: a Windows path; here, write {meant}")
    # The project the file would be in (`--model ~/proj/models/model.onnx` from elsewhere; a
    # fresh clone has no models/ yet), else this folder's: its dvc commands run there.
    folder = found.parent
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    root = _root_above(Path(os.path.realpath(folder))) or project_root()
    # In another DVC project (one that imports the model), what fetches it is its path.
    ours = root is None or runs_stage(root, stage)
    # DVC names a file by its path from the project's root, whichever folder names it here.
    # There, `dvc --cd` runs it from here, in this project's environment (an import-only
    # project may have none).
    there = "" if ours else f"--cd {shlex.quote(str(root))} "
    pulled = stage if ours else _from_root(found, root)
    remote = f"'uv run dvc {there}pull {pulled}' where a DVC remote holds it"
    if found.is_symlink():  # the link is here, the file it leads to gone
        target = os.readlink(found)
        end = _chain_end(found)
        if end is None:
            raise FileNotFoundError(f"{path} is a link to {target}, which loops back on itself")
        if end != target:  # a link to a link: the one that leads nowhere is named too
            target = f"{target}, a link to {end}"
        if not is_dvc_cache_file(end):
            raise FileNotFoundError(f"{path} is a link to {target}, which does not exist")
        raise FileNotFoundError(
            f"{path} is a link to {target}, which DVC's cache no longer holds (a `dvc gc` in a"
            " project sharing the cache removes what this one links to): "
            + (f"{rerun(stage)}, or {remote}{commands_where(root)}" if ours else remote)
        )
    if not path.is_absolute() and root is None:  # a notebook started elsewhere
        raise FileNotFoundError(
            f"{path} not found, and {Path.cwd()} is not inside a visionpipe project (no dvc.yaml"
            " here or in a folder above): run from the project or a folder inside it"
            " (os.chdir to it in a notebook)"
        )
    if not ours:
        raise FileNotFoundError(
            f"{path} not found here or in the project {root}: if DVC tracks it there (a .dvc file"
            f" beside it, an import), {remote}"
        )
    raise FileNotFoundError(_missing(path, stage, root))


def _from_root(path: Path, root: Path | None) -> str:
    """`path` as DVC in the project at `root` names it (from the root, POSIX); absolute where it
    is not inside. A relative one whose folder is not here is the project's (`in_project`),
    but for one that climbs (`../x/model.onnx`), which is where this runs."""
    climbs = ".." in path.parts
    if not path.is_absolute() and not climbs and not path.parent.is_dir() and root is not None:
        path = root / path
    real = Path(os.path.realpath(path.parent)) / path.name
    try:
        return real.relative_to(Path(root or ".").resolve()).as_posix()
    except ValueError:
        return str(real)


def _missing(path: Path, stage: str, root: Path | None) -> str:
    """Why `path`, missing in this pipeline's project at `root`, is: a stage's output not made
    yet (and how to make or fetch it), or a file of the user's own, a typo."""
    # From a subfolder (photos/, notebooks/), the project's file is the one at its root.
    places = [path] if path.is_absolute() or root is None else [path, root / path]
    output = any(pipeline_output(p) for p in places)
    if not output and path not in (PREDICTIONS, PREDICTION_GRID):
        return f"{path} not found"  # `--model modles/model.onnx`: no stage to run for it
    message = f"{path} not found: {rerun(stage)} first"
    if output:
        # A fresh clone has dvc.lock but none of the outputs: a teammate's DVC remote has them.
        # DVC deletes a stage's outputs before running it, so a failed or stopped run leaves
        # none; the last successful run's are in DVC's cache. --force: the stopped run's
        # partial files (TensorBoard events, plots) would otherwise block the checkout.
        message += (
            f"; in a fresh clone, 'uv run dvc pull {stage}' fetches the ones dvc.lock records"
            f" from the DVC remote; after a failed or stopped run, 'uv run dvc checkout --force"
            f" {stage}' restores them (docs/training.md, 'After a failed or stopped run')"
        )
    return message + commands_where(root)


def restore_hint(path: Path) -> str:
    """How to get a damaged or cut-short file at `path` back: copy it again, and where it is
    the pipeline's own output (models/model.pt in a pipeline's project), DVC's copy of it."""
    if (own := own_model(path)) is None:
        return "copy it again"
    root, named = own
    recorded = _recorded(root, named)
    if recorded is None:  # no run recorded it (a clone before its first run): make it
        return f"copy it again, or make the project's own: {rerun(_STAGE_OF[named])}" + (
            commands_where(root)
        )
    if (linked := _linked_cache_file(Path(path), root, recorded)) is not None:
        # A write through the link (root's, or a `cp` over it) damaged DVC's own copy: a
        # checkout links it again, and a re-run whose result has the same hash (CPU runs are
        # reproducible) keeps the damaged cache file under that hash.
        cached, stage = linked
        # One line to paste wherever this runs: the rm's relative path is the project's.
        there = f"cd {shlex.quote(str(root))} && " if commands_where(root) else ""
        # Not in quotes as other commands here: its own quoting (a path with a space) would
        # clash with them.
        return (
            f"it is a link to DVC's cache (cache.type symlink or hardlink), so DVC's own copy is"
            f" the damaged one: remove both and make it again, with this line: {there}rm -f"
            f" {named} {shlex.quote(str(cached))} && uv run dvc repro {stage}"
        )
    stage, md5 = recorded
    if not _in_cache(root, md5):  # a clone that has not pulled: checkout would delete it
        return (
            f"copy it again, or fetch the project's own with 'uv run dvc pull {stage}' where a"
            f" DVC remote holds it, or {rerun(stage)}" + commands_where(root)
        )
    return (
        f"copy it again, or restore the project's own with 'uv run dvc checkout --force {named}'"
        + commands_where(root)
    )


_STAGE_OF = {MODEL: "train", ONNX_MODEL: "export"}


def own_model(path: Path) -> tuple[Path, Path] | None:
    """The project and the name from its root (as DVC names it) where `path` is one of its
    pipeline's models (models/model.pt, models/model.onnx), wherever this runs; else None."""
    # The folder's real path, not the file's: a DVC-linked output's is in the cache.
    real = Path(os.path.realpath(Path(path).parent)) / Path(path).name
    root = _root_above(real.parent)
    if root is None or not runs_stage(root, "train"):
        return None
    named = real.relative_to(root.resolve())
    return (root, named) if named in (MODEL, ONNX_MODEL) else None


def _recorded(root: Path, named: Path) -> tuple[str, str] | None:
    """The stage dvc.lock at `root` says wrote `named` and the MD5 it recorded; None if none."""
    recorded = [
        (stage, str(out.get("md5") or ""))
        for stage, entry in stages_of(root / DVC_LOCK).items()
        for out in (entry or {}).get("outs") or []
        if isinstance(out, dict) and out.get("path") == named.as_posix()
    ]
    return recorded[0] if recorded else None


def cache_file(root: Path, md5: str) -> Path | None:
    """Where the DVC cache of the project at `root` keeps the file of `md5` (held or not)."""
    try:
        cache = dvc_cache_of(root)  # DVC's own reading of the config: a shared cache.dir
    except ImportError:  # a predict-only install has no DVC
        return None
    return cache / md5[:2] / md5[2:] if cache and len(md5) > 2 else None


def _in_cache(root: Path, md5: str) -> bool:
    """Whether the DVC cache holds `md5` (True where it cannot be told: checkout says then)."""
    try:
        cached = cache_file(root, md5)
    except OSError:
        return True
    return cached is None or cached.is_file()


def _linked_cache_file(
    path: Path, root: Path, recorded: tuple[str, str]
) -> tuple[Path, str] | None:
    """The DVC cache file that `path` shares its bytes with (a link of cache.type symlink or
    hardlink), and the stage dvc.lock says wrote it; None for a copy of its own."""
    stage, md5 = recorded
    if path.is_symlink():
        end = Path(os.path.realpath(path))
        # The recorded copy's cache file (xx/yyyy...): a link to another, older one is mended
        # by the checkout.
        recorded_one = end.parent.name + end.name == md5
        return (end, stage) if recorded_one and is_dvc_cache_file(end) else None
    try:
        if os.stat(path).st_nlink < 2:
            return None
        cached = cache_file(root, md5)
        return (cached, stage) if cached and os.path.samefile(path, cached) else None
    except OSError:
        return None


def commands_where(root: Path | None) -> str:
    """Where the `dvc` commands a message gives must run, when that is not here: DVC reads
    dvc.yaml, stage names and paths from the folder it runs in, and from a subfolder (photos/,
    notebooks/) finds none of them."""
    if root is None or Path.cwd().resolve() == Path(root).resolve():
        return ""
    return f" (run the dvc commands in {root})"


def _chain_end(link: Path) -> str | None:
    """Where the links from `link` on end: the first path that is not itself a link, as the
    last link names it (a relative target is taken from that link's folder); None for a loop."""
    seen: set[str] = set()
    target = str(link)
    while os.path.islink(target):
        if os.path.abspath(target) in seen:
            return None
        seen.add(os.path.abspath(target))
        hop = os.readlink(target)
        target = hop if os.path.isabs(hop) else os.path.join(os.path.dirname(target), hop)
    return target if len(seen) > 1 else os.readlink(link)


# What the stages write (and train's checkpoints), which DVC records or resumes from, and the
# pipeline's code and config; not predictions/, whose files a user may add beside the stage's.
PIPELINE_OUTPUTS = (
    MODEL,
    ONNX_MODEL,
    RAW_DIR,
    PROCESSED_DIR,
    SAMPLES_DIR,
    Path("metrics"),
    Path("dvclive"),
    TB_DIR,
    CHECKPOINT_DIR,
    Path("conf"),
    Path("src"),
    Path("stages"),
)
# What any DVC project keeps of itself: its pipeline, lock, params, DVC's and git's folders.
PROJECT_RECORDS = (
    Path("dvc.yaml"),
    DVC_LOCK,
    PARAMS,
    Path(".dvc"),
    Path(".dvcignore"),
    Path(".git"),
)
# A folder no output goes into wherever it is: a git repository's own (the project may be a
# folder of a bigger repository, whose .git/ is above it). Not any .dvc/: queued experiments
# run in copies of the project inside one.
GIT_FOLDER = ".git"
# What `dvc add` writes beside what it tracks (data/my_photos.dvc): DVC's record of it.
DVC_FILE_SUFFIX = ".dvc"
# Files read from any folder: a .gitignore written over lets `git add -A` take the datasets; a
# pyproject.toml, uv.lock or .python-version written over stops every `uv run` below it.
TOOL_FILES = (".gitignore", ".gitattributes", "pyproject.toml", "uv.lock", ".python-version")


def guarded_names() -> str:
    """PIPELINE_OUTPUTS, PROJECT_RECORDS and the names guarded anywhere as a message lists
    them, folders with a '/'."""
    files = {Path(".dvcignore")}
    return (
        ", ".join(
            p.as_posix() + ("" if p.suffix or p in files else "/")
            for p in (*PIPELINE_OUTPUTS, *PROJECT_RECORDS)
        )
        + f", *{DVC_FILE_SUFFIX}, "
        + ", ".join(TOOL_FILES)
    )


def pipeline_output(path: Path) -> bool:
    """Whether `path` is, or lies under, one of PIPELINE_OUTPUTS at its usual place in the
    project this folder is inside, or in the project `path` itself is inside
    (through links: a linked folder is that folder); outside any project, nothing is."""
    return _under(path, records=False)


def pipeline_file(path: Path) -> bool:
    """`pipeline_output`, or one of a DVC project's PROJECT_RECORDS, which an output written over
    would leave DVC or git unable to read."""
    return _under(path, records=True)


def _under(path: Path, records: bool) -> bool:
    real = _real(path)
    if records and any(
        GIT_FOLDER in p.parts or p.suffix == DVC_FILE_SUFFIX or p.name in TOOL_FILES for p in real
    ):
        return True
    # The project here, and the one holding `path`: `--json ~/proj/models/model.pt` run from
    # another folder names that project's model.
    folder = Path(os.path.realpath(path.parent))
    roots = {r for r in (project_root(), _root_above(folder)) if r is not None}
    # Each through its folders' links, and through its own too.
    places = set().union(
        *(_real(root / name) for root in roots for name in _guarded(root, records))
    )
    return any(p.is_relative_to(o) for p in real for o in places)


def _guarded(root: Path, records: bool) -> tuple[Path, ...]:
    """What an output may not be in the project at `root`: this pipeline's PIPELINE_OUTPUTS (a
    project of another kind has its own data/ and models/), and with `records` any DVC
    project's PROJECT_RECORDS."""
    own = PIPELINE_OUTPUTS if runs_stage(root, "train") else ()
    return own + (PROJECT_RECORDS if records else ())


def _root_above(folder: Path) -> Path | None:
    return next(
        (
            f
            for f in (folder, *folder.parents)
            if (f / "dvc.yaml").is_file() or (f / ".dvc").is_dir()
        ),
        None,
    )


def runs_stage(root: Path, stage: str) -> bool:
    """Whether the project at `root` is this pipeline, with stage `stage`: another DVC project
    (one that imports the model, a cookiecutter layout) has its own data/ and models/."""
    return (root / "stages" / f"{stage}.py").is_file()


def _real(path: Path) -> set[Path]:
    """`path` with its folders' links resolved, and with its own link resolved too, but for a
    link that a write replaces (`through_link`: a DVC output under cache.type symlink, whose
    cache file a write leaves as it was): its place is all it is."""
    folder = Path(os.path.realpath(path.parent)) / path.name
    if path.is_symlink() and through_link(path) == path:
        return {folder}
    return {folder, Path(os.path.realpath(path))}


def split_file(split: str) -> Path:
    """What identifies a split: its labels, shape and the checksum of its images (JSON)."""
    return PROCESSED_DIR / f"{split}.json"


# A Windows drive path (C:\photos, C:/photos) or a network share (\\server\share).
_WINDOWS_PATH = re.compile(r"^(?:([A-Za-z]):[\\/]|\\\\[^\\])")


def meant_here(text: str) -> str | None:
    """The path that `text`, written with Windows' '\\' between folders, names on this machine:
    '/' between them, a drive's where WSL mounts it (C:\\x is /mnt/c/x). None where `text` holds
    neither '\\' nor a drive, starts with '/', or on Windows; a network share's (\\\\server\\share)
    says to give its path here."""
    text = text.removeprefix("\\\\?\\")  # Win32's long-path form: \\?\C:\x, \\?\UNC\nas\x
    if text.startswith("UNC\\"):
        text = "\\" + text[3:]
    drive = re.match(r"^([A-Za-z]):[\\/]", text)
    if os.name == "nt" or text.startswith("/") or (drive is None and "\\" not in text):
        return None  # from '/', this system's own path, whose file names may hold a backslash
    if text.startswith("\\\\"):  # \\server\share
        return "its path on this machine (where the share is mounted)"
    rest = (text[3:] if drive else text).replace("\\", "/")
    return f"/mnt/{drive[1].lower()}/{rest}" if drive else rest


class ForeignPathError(ValueError):
    """A param holds a path of another operating system, which cannot exist on this one."""


def user_path(value: str | Path, param: str) -> Path:
    """A local path as a user writes it in a param or variable (`param` names it in errors):
    `~` and environment variables (`$HOME`) expanded, as the shell expands them on the command
    line (a variable that is not set stays as written). A Windows path on another system is
    refused: it cannot exist here, and read as a relative path it would only be reported
    missing under the project folder."""
    text = os.path.expanduser(os.path.expandvars(str(value)))
    windows = _WINDOWS_PATH.match(text) if os.name != "nt" else None
    if windows:
        wsl = f" (under WSL, that folder is {meant_here(text)})" if windows[1] else ""
        raise ForeignPathError(
            f"{param} '{value}' is a Windows path, which this machine ({os.uname().sysname})"
            f" cannot open: give its path on this machine{wsl}"
        )
    if os.name != "nt" and "\\" in text and "/" not in text and not os.path.lexists(text):
        # data\raw, %USERPROFILE%\Pictures, or a \\nas\share that Hydra took a '\' of: not a
        # file named with backslashes in the project, which it would be read as.
        variable = " and $NAME for Windows' %NAME%" if re.search(r"%\w+%", text) else ""
        raise ForeignPathError(
            f"{param} '{value}' is a Windows path ('\\' between folders), which this machine "
            f"({os.uname().sysname}) cannot open: give its path on this machine, with '/'"
            f"{variable}"
        )
    # A folder copied from a Mac names "été" decomposed; the param as typed, composed. (A
    # relative path is its caller's to look up: it is taken from the project's folder.)
    return Path((os.path.isabs(text) and unicode_twin(text)) or text)


class TrackedOutputError(ValueError):
    """Outputs that dvc.yaml has DVC cache are tracked by git too."""


def refuse_git_tracked_outputs(dvc_file: Path = Path("dvc.yaml")) -> None:
    """Stop before a stage runs if git tracks outputs that dvc.yaml has DVC cache: a project
    committed under older code, which kept them in git. DVC refuses each such output ('already
    tracked by SCM') only after the stage that writes it has run, one file a run (a whole
    training run lost per file); this names them all at once."""
    tracked = _git_tracked(_cached_outputs(dvc_file))
    if tracked:
        names = " ".join(tracked)
        raise TrackedOutputError(
            f"git tracks {names}, which dvc.yaml has DVC cache (committed by `dvc exp save`,"
            " which adds dvc.yaml's top-level metrics to git whatever .gitignore says, or by an"
            " older visionpipe, which kept them in git), and DVC would refuse them after the"
            f" stage ran: run 'git rm -r --cached {names}', commit, and run again"
        )


def stages_of(dvc_file: Path) -> dict[str, Any]:
    """The stages of dvc.yaml, or of dvc.lock; {} where there is none (a stage script run by
    hand elsewhere, a run DVC has not recorded)."""
    import yaml  # the pipeline's own dependency: a predict-only install never runs a stage

    try:
        # libyaml's loader where PyYAML has it: 2 ms for dvc.yaml, where the pure-Python one
        # takes 19 ms of every stage's start.
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        stages = yaml.load(dvc_file.read_text(encoding="utf-8"), Loader=loader)["stages"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return {}
    return stages if isinstance(stages, dict) else {}


def dvc_stage() -> str | None:
    """The name dvc.yaml gives the stage DVC is running (None outside DVC): DVC_STAGE without
    the dvc.yaml it is in, which DVC adds when `dvc repro` runs from another folder
    (`../dvc.yaml:train`)."""
    stage = os.environ.get("DVC_STAGE")
    if not stage:
        return None
    file, _, name = stage.rpartition(":")
    # Another dvc.yaml's stage (a sub-pipeline's, `variants/dvc.yaml:train`) is none of ours;
    # the root's, named from a sub-folder, climbs alone (`../../dvc.yaml`).
    if file and any(part != ".." for part in Path(file).parent.parts):
        return None
    return name


def code_deps(stage: str) -> list[Path]:
    """The code files (under src/ or stages/) that dvc.yaml lists as `stage`'s deps."""
    deps = (stages_of(Path("dvc.yaml")).get(stage) or {}).get("deps") or []
    files = [Path(d) for d in deps if isinstance(d, str)]
    return [f for f in files if f.parts[:1] in (("src",), ("stages",)) and f.is_file()]


# The version string: the package loads it, no stage depends on it (a bump re-runs nothing;
# a model records the version of the code that trained it).
NOT_A_DEP = ("src/visionpipe/_version.py",)


def unlisted_code(stage: str, loaded: list[str], script: str | None = None) -> list[str]:
    """The project's Python files among `loaded` (the files of the modules a stage imported:
    under src/ or stages/, or a module at the root) that dvc.yaml does not list among `stage`'s
    deps, as files or in folders: DVC would not re-run the stage when one changes, and would
    keep the old code's results as the new code's. An environment inside the project (`.venv/`,
    a conda `env/` with its own standard library) is no project code. None for a stage whose
    deps dvc.yaml does not list plainly (a foreach or matrix stage's, templated), or whose
    command does not run `script` (the one running: a sub-pipeline's stage of that name, run
    from its own folder, where DVC names it without its dvc.yaml)."""
    entry = stages_of(Path("dvc.yaml")).get(stage)
    deps = entry.get("deps") if isinstance(entry, dict) else None
    if not isinstance(deps, list) or any("${" in str(d) for d in deps):
        return []
    root = os.getcwd()  # the project's, as DVC runs a stage; its real path, as are sys.path's
    if script and Path(os.path.relpath(script, root)).as_posix() not in str(entry.get("cmd")):
        return []
    listed = tuple(os.path.normpath(os.path.join(root, str(d))) for d in deps)
    unlisted = set()
    for file in loaded:
        # Relative names are torch's own namespaces (`_ops.py`), not files here.
        if not file.startswith(root + os.sep) or not file.endswith(".py") or _in(file, listed):
            continue
        parts = os.path.relpath(file, root).split(os.sep)
        if len(parts) > 1 and parts[0] not in ("src", "stages"):
            continue
        if any(p.startswith(".") or p in ("site-packages", "dist-packages") for p in parts):
            continue
        if "/".join(parts) not in NOT_A_DEP and not _empty(file):
            unlisted.add("/".join(parts))
    return sorted(unlisted)


def _empty(file: str) -> bool:
    """Whether `file` is empty (a package's bare `__init__.py`): no code to keep in step, and
    DVC warns on every run of a stage that lists an empty file."""
    try:
        return os.path.getsize(file) == 0
    except OSError:
        return False


def _in(file: str, deps: tuple[str, ...]) -> bool:
    """Whether `file` is one of `deps` or inside one of them (a folder dep: `src`)."""
    return any(file == d or file.startswith(d + os.sep) for d in deps)


class UnlistedCodeError(ValueError):
    """A stage imports project code that dvc.yaml does not list among its deps."""


def refuse_unlisted_code(stage: str, loaded: list[str], script: str | None = None) -> None:
    """Stop before `stage` runs where it imported `unlisted_code`: DVC would not re-run it
    when that code changes, and would keep the old code's results as the new code's."""
    unlisted = unlisted_code(stage, loaded, script)
    if unlisted:
        lines = "".join(f"\n      - {f}" for f in unlisted)
        model = "; a model's module: train, evaluate and export" if stage in MODEL_STAGES else ""
        raise UnlistedCodeError(
            f"stage {stage} imports {', '.join(unlisted)}, which dvc.yaml does not list among"
            " its deps: DVC would not re-run it when that code changes, and would keep the old"
            f" code's results. Add to the deps of {stage} in dvc.yaml (and of each other stage"
            f" that imports it{model}) these files, or a folder that holds them:{lines}"
        )


# The stages that build a model from its module.
MODEL_STAGES = ("train", "evaluate", "export")


def _cached_outputs(dvc_file: Path) -> list[str]:
    return _outputs(list(stages_of(dvc_file).values()), cached=True)


def _outputs(stages: list[Any], cached: bool) -> list[str]:
    """The outputs of `stages` (dvc.yaml entries) that DVC caches, or (`cached` False) those
    it leaves to git."""
    entries: list[Any] = [
        entry
        for stage in stages
        if isinstance(stage, dict)
        for kind in ("outs", "metrics", "plots")
        for entry in stage.get(kind) or []
    ]
    outputs = []
    for entry in entries:  # a path, or {path: {cache: false, ...}}
        path, options = next(iter(entry.items())) if isinstance(entry, dict) else (entry, None)
        if bool((options or {}).get("cache", True)) == cached:
            outputs.append(str(path))
    return outputs


def committed_yaml(rev: str, path: Path) -> dict[str, Any] | None:
    """A YAML file (params.yaml, conf/config.yaml) as commit `rev` holds it; None where git
    cannot say (no repository, no file)."""
    # `rev:./path` is from the working folder, the project's: `rev:path` would be from the git
    # repository's root, another file where the project is a subfolder of a bigger repository.
    # An absolute path (the project's conf/, from a sub-folder) as from here: git reads no
    # absolute one.
    spec = f"./{Path(os.path.relpath(path)).as_posix() if path.is_absolute() else path.as_posix()}"
    try:
        text = subprocess.run(
            ["git", "show", f"{rev}:{spec}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    import yaml  # the pipeline's own dependency, as for stages_of

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:  # a commit's conflict markers
        return None
    return raw if isinstance(raw, dict) else None


def outputs_in_git(stage: str) -> tuple[list[str], bool]:
    """The outputs of `stage` that dvc.yaml keeps out of DVC's cache and git tracks (`dvc
    checkout` does not bring them back), and whether git brings back the last ones: where
    dvc.lock's entry of the stage is the commit's (after an experiment applied since, git would
    bring back the commit's, beside the experiment's model)."""
    kept = _git_tracked(_outputs([stages_of(Path("dvc.yaml")).get(stage)], cached=False))
    if not kept:
        return [], False
    stages = (committed_yaml("HEAD", Path("dvc.lock")) or {}).get("stages")
    theirs = stages.get(stage) if isinstance(stages, dict) else None
    return kept, theirs is not None and theirs == stages_of(Path("dvc.lock")).get(stage)


def _git_tracked(outputs: list[str]) -> list[str]:
    """Those of `outputs` (files or folders) that git tracks a file of."""
    if not outputs:
        return []
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--", *outputs], capture_output=True, text=True, check=True
        ).stdout.split("\0")
    except (OSError, subprocess.CalledProcessError):
        return []  # no git, or not a git repository: nothing for DVC to refuse
    files = [Path(f) for f in listed if f]
    return [out for out in outputs if any(f == Path(out) or Path(out) in f.parents for f in files)]
