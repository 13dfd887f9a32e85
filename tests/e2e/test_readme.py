"""Every shell command in README.md and the docs pages, run in page order in a fresh project copy
on tiny data.

The commands are parsed out of the pages' ```sh blocks, never copied here, so an edited command is
what runs. Each one must have a rule below saying how it runs (`plan`); a command without one fails
the test, naming it and its page, so a new command forces someone to teach this test how to check
it. The commands run in two walks, side by side under `pytest -n 2`: the README's, and the docs
pages' in the order of `PAGES`, each page building on what the ones before it left.
"""

from __future__ import annotations

import functools
import hashlib
import io
import itertools
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

import visionpipe
from tests.helpers import (
    EXP_SHOW_HEADLINE,
    ROOT,
    env,
    install_pinned,
    make_project,
    make_venv,
    run,
)
from visionpipe import paths
from visionpipe.cifar_pickle import CLASSES
from visionpipe.config.compose import compose, diff_keys
from visionpipe.datasets import DATASETS
from visionpipe.sources import PACKED_FOLDER

README = ROOT / "README.md"
HYMENOPTERA = DATASETS["hymenoptera"].official
assert HYMENOPTERA is not None
DOCS = ROOT / "docs"
# Every page with shell commands, in the order they run: later pages use what earlier ones left
# (the team page shares the experiments the datasets and training pages made).
PAGES = (
    README,
    *(
        DOCS / name
        for name in (
            "learning.md",
            "parameters.md",
            "datasets.md",
            "training.md",
            "gpu.md",
            "team.md",
            "results.md",
            "development.md",
            "deploy.md",
            "serving.md",
            "predicting.md",
        )
    ),
)
SHELL_FENCES = frozenset({"sh", "bash", "shell"})  # other fences (the stage diagram) are not run
PLACEHOLDER = re.compile(r"<[^>]*>|\.\.\.|\[--")  # <exp-a>, IMAGE_OR_DIR_OR_GLOB..., [--topk 3]
SHELL_SYNTAX = frozenset({"|", "||", ";", "&", ">", ">>", "<", "2>", "2>&1", "$(", "`"})

CIFAR_PER_CLASS = {"train": 12, "test": 3}  # stand-in images per class and split
TINY_PARAMS: dict[str, dict[str, Any]] = {
    "train": {"epochs": 1, "batch_size": 16, "log_every": 2},
    "export": {"parity_images": 16},
}
STAND_IN_CLASSES: dict[str, tuple[list[str], int]] = {  # dataset: classes, test images
    "cifar10": (list(CLASSES), len(CLASSES) * CIFAR_PER_CLASS["test"]),
    "hymenoptera": (
        sorted({cls for _, cls in HYMENOPTERA.layout}),
        sum(n for (split, _), n in HYMENOPTERA.layout.items() if split == "val"),
    ),
}
PHOTOS = "photos"  # the docs' /home/me/photos: a folder of class folders beside the copy
PHOTO_CLASSES = {"cats": 15, "dogs": 15}  # photos per class; the pipeline splits them itself
TINY_RECIPE_EPOCHS = 1  # the copy's recipes train this long, like its defaults (TINY_PARAMS)
# Tools that run in the checkout, not the copy (see _pytest, _ruff): a page repeating a command of
# theirs that already ran would prove nothing new, so it runs once.
RUN_ONCE = frozenset({"pytest", "ruff"})
QUEUE_TIMEOUT_S = 900  # the three queued runs take about 1.5 min on 2 cores
QUEUE_POLL_S = 2.0  # between looks for the queued runs' git refs: no DVC process, no CPU
# `dvc queue status` costs seconds of the CPU the workers need: asked when every queued run has its
# ref (so is done or ending), and otherwise this rarely, to notice a run that failed.
QUEUE_STATUS_S = 30.0
TERMINAL_COLUMNS = "120"  # `dvc exp show` runs as in a terminal this wide


def _strip_comment(line: str) -> str:
    """`line` without a trailing `# comment` (a `#` that starts a word outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def shell_commands(markdown: str) -> list[str]:
    """Commands of the shell-fenced blocks in order: `\\` continuations joined, comments dropped."""
    commands: list[str] = []
    fence: str | None = None  # language of the open fence ("" for a bare one)
    pending = ""
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            if fence is None:
                fence = (line.strip()[3:].split() or [""])[0].lower()
            else:
                assert not pending, f"a shell block ends in a continuation: {pending!r}"
                fence = None
            continue
        if fence not in SHELL_FENCES:
            continue
        text = line.rstrip()
        if text.endswith("\\"):
            pending += text[:-1].strip() + " "
            continue
        command = " ".join((pending + _strip_comment(text)).split())
        pending = ""
        if command:
            commands.append(command)
    return commands


def _parts(command: str) -> list[str]:
    """The commands chained with `&&` in one line, each run (and checked) in turn."""
    return [p.strip() for p in re.split(r"\s+&&\s+", command)]


def page_parts(pages: tuple[Path, ...] = PAGES) -> list[tuple[str, str]]:
    """(page, command) for every command of `pages`, in the order they run."""
    return [
        (str(page.relative_to(ROOT)), part)
        for page in pages
        for command in shell_commands(page.read_text())
        for part in _parts(command)
    ]


@dataclass
class Ctx:
    """The project copy the pages' commands run in, and what earlier commands left for later."""

    tmp: Path
    repo: Path
    page: str = ""  # the page of the command running now, and the command, for messages
    command: str = ""
    queued: list[str] = field(default_factory=list)  # names from `dvc exp run --queue`
    # Each --queue command's experiment names and its -S value lists.
    sweeps: list[tuple[list[str], dict[str, list[Any]]]] = field(default_factory=list)
    last_exp: str = ""  # name of the last experiment run in the workspace
    timings: list[tuple[str, float]] = field(default_factory=list)


Step = Callable[[Ctx], None]


def _clone(ctx: Ctx) -> None:
    # make_project's fresh git+DVC copy is the clone; a clone also has an `origin`, which
    # `dvc exp push origin` needs, so the copy gets a bare repo as its origin.
    origin = ctx.tmp / "origin.git"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], ctx.tmp)
    run(["git", "remote", "add", "origin", str(origin)], ctx.repo)
    run(["git", "push", "-q", "-u", "origin", "main"], ctx.repo)


# docs/deploy.md names the wheel by its version: a new version fails here until the docs say it.
WHEEL = f"visionpipe-{visionpipe.__version__}-py3-none-any.whl"


def _built_wheel(ctx: Ctx) -> None:
    run(["uv", "build", "-q", "--wheel"], ctx.repo)
    assert (ctx.repo / "dist" / WHEEL).is_file(), sorted((ctx.repo / "dist").iterdir())


def _server_venv(ctx: Ctx) -> None:
    # The other machine: a folder holding what the page says to copy there, and a photo.
    server = ctx.tmp / "server"
    server.mkdir()
    shutil.copy(ctx.repo / "dist" / WHEEL, server)
    shutil.copy(ctx.repo / paths.ONNX_MODEL, server)
    shutil.copy(ctx.tmp / "shared" / "samples" / "dog.png", server)
    make_venv(server / "visionpipe-env")


def _server_predict(ctx: Ctx) -> None:
    server = ctx.tmp / "server"
    cmd = ["visionpipe-env/bin/visionpipe", "predict", "dog.png", "--model", "model.onnx"]
    assert run(cmd, server).stdout.startswith("dog.png: "), f"`{ctx.command}` gave no answer"


def _in_this_venv(prefix: str) -> Step:
    """The page's command with its `uv run [--with PKG] python` prefix replaced by this venv's
    python (MNN is a dev dependency)."""

    def step(ctx: Ctx) -> None:
        assert ctx.command.startswith(prefix), ctx.command
        run([sys.executable, *shlex.split(ctx.command.removeprefix(prefix))], ctx.repo)

    return step


def _not_in_the_walk(ctx: Ctx) -> None:
    # Converters and runtimes outside the lock (onnx-simplifier, pnnx, onnx2tf with TensorFlow's
    # 600 MB, tract, onnx2torch), whose shapes are the tutorial CNN's 32 pixels:
    # bench/edge_runtimes.py runs them on every model form and on a trained model; the walk does
    # not download them.
    pass


RESTORE_CODE = "git restore --source=HEAD -- . ':!params.yaml' ':!dvc.lock' ':!metrics' ':!dvclive'"
KEPT_BY_RESTORE = ("params.yaml", "dvc.lock", "metrics", "dvclive")


def _restore_code(ctx: Ctx) -> None:
    # After `dvc exp apply`: the commit's code back (a file the experiment's older tree lacked
    # too), the experiment's params, lock, metrics and model kept.
    (ctx.repo / "src" / "visionpipe" / "cli.py").write_text("# an older tree's\n")
    (ctx.repo / "stages" / "predict.py").unlink()
    kept = {
        p: (ctx.repo / p).read_bytes() for p in ("params.yaml", "dvc.lock", "models/model.onnx")
    }
    run(shlex.split(RESTORE_CODE), ctx.repo)
    status = run(["git", "status", "--porcelain", "--untracked-files=no"], ctx.repo).stdout
    left = [line[3:] for line in status.splitlines()]
    assert all(p.startswith(KEPT_BY_RESTORE) for p in left), left
    assert kept == {p: (ctx.repo / p).read_bytes() for p in kept}


# Steps a user takes that the test stands in for.
SETUP: dict[str, Step] = {
    RESTORE_CODE: _restore_code,
    "git clone <this repo> visionpipe": _clone,
    "cd visionpipe": lambda ctx: None,  # every command runs with the copy as its working directory
    # The install, in the checkout whose environment the tests run in (the copy has no venv).
    "uv sync --locked --compile-bytecode": lambda ctx: run(
        ["uv", "sync", "--locked", "--compile-bytecode"], ROOT
    ),
    "git add -A": lambda ctx: run(["git", "add", "-A"], ctx.repo),
    "cp models/model.pt ../start.pt": lambda ctx: run(
        ["cp", "models/model.pt", "../start.pt"], ctx.repo
    ),
    'git commit -m "trained model"': lambda ctx: run(
        ["git", "commit", "-qm", "trained model"], ctx.repo
    ),
    "git push": lambda ctx: run(["git", "push", "-q"], ctx.repo),
    'git tag -a image-classifier-onnx@v1.0.0 -m "the model of this run"': lambda ctx: run(
        ["git", "tag", "-a", "image-classifier-onnx@v1.0.0", "-m", "the model of this run"],
        ctx.repo,
    ),
    "git push origin image-classifier-onnx@v1.0.0": lambda ctx: run(
        ["git", "push", "-q", "origin", "image-classifier-onnx@v1.0.0"], ctx.repo
    ),
    "uv build --wheel": _built_wheel,
    "python3 -m venv visionpipe-env": _server_venv,
    f"visionpipe-env/bin/pip install {WHEEL}": lambda ctx: install_pinned(
        str(ctx.tmp / "server" / "visionpipe-env" / "bin" / "python"), ctx.tmp / "server" / WHEEL
    ),
    "visionpipe-env/bin/visionpipe predict dog.png --model model.onnx": _server_predict,
    # docs/deploy.md's phones and boards (tests/unit/test_export.py runs the MNN block too).
    "uv run --with onnxsim==0.8.1 onnxsim models/model.onnx model.sim.onnx": _not_in_the_walk,
    'uv run --with MNN==3.6.1 python -c "import MNN, _tools, sys; _tools.mnnconvert(sys.argv)" '
    "-f ONNX --modelFile models/model.onnx --MNNModel model.mnn --bizCode visionpipe": (
        _in_this_venv("uv run --with MNN==3.6.1 python ")
    ),
    "cp models/model.onnx model.onnx": lambda ctx: run(
        ["cp", "models/model.onnx", "model.onnx"], ctx.repo
    ),
    "uv run --with pnnx==20261020 pnnx model.onnx 'inputshape=[1,3,32,32]' fp16=0": (
        _not_in_the_walk
    ),
    "cp models/model.onnx model-tf.onnx": lambda ctx: run(
        ["cp", "models/model.onnx", "model-tf.onnx"], ctx.repo
    ),
    "uv run python -c \"import numpy; numpy.save('calibration_image_sample_data_20x128x128x3_"
    "float32.npy', numpy.random.rand(20, 128, 128, 3).astype('float32'))\"": _in_this_venv(
        "uv run python "
    ),
    "uv run --no-project --with onnx2tf==1.29.24 onnx2tf -i model-tf.onnx -o tflite "
    "-ois image:1,3,32,32 -rtpo Erf": _not_in_the_walk,
    # docs/deploy.md's tract and onnx2torch: scripts the page shows but the copy does not hold.
    "uv run --no-project --with tract==0.23.9 --with numpy python run_tract.py": _not_in_the_walk,
    "uv run --no-project --with onnx2torch==1.5.15 --with numpy python run_onnx2torch.py": (
        _not_in_the_walk
    ),
}


def _predict_synopsis(ctx: Ctx, part: str) -> list[list[str]]:
    # Every form of input the synopsis names (a file, a folder, a glob the CLI expands itself)
    # and every option, once per backend.
    out = ctx.tmp / "predict-out"
    out.mkdir(exist_ok=True)
    inputs = "../shared/samples/dog.png data/samples 'data/samples/*.png'"
    return [
        shlex.split(
            f"uv run visionpipe predict {inputs} --model models/model.{suffix} --topk {k}"
            f" --backend {backend} --batch-size {batch} --json {out}/{backend}.json"
            f" --csv {out}/{backend}.csv --grid {out}/{backend}.png"
        )
        for backend, suffix, k, batch in (("onnx", "onnx", 3, 64), ("torch", "pt", 2, 5))
    ]


def _two_experiments(ctx: Ctx, part: str) -> list[list[str]]:
    # <exp-a> <exp-b>: the experiments with the largest and smallest train.lr so far.
    exps = _experiments(ctx)
    assert len(exps) >= 2, f"`{ctx.command}` needs two experiments, earlier commands made {exps}"
    by_lr = sorted(exps, key=lambda name: _param(exps[name], "train.lr"))
    return [shlex.split(part.replace("<exp-a>", by_lr[-1]).replace("<exp-b>", by_lr[0]))]


def _last_experiment(ctx: Ctx, part: str) -> list[list[str]]:
    # <exp>: the experiment the last `dvc exp run` in the workspace made.
    assert ctx.last_exp, f"`{ctx.command}` needs an experiment, and none ran before it"
    return [shlex.split(part.replace("<exp>", ctx.last_exp))]


def _artifact_from_origin(ctx: Ctx, part: str) -> list[list[str]]:
    # <repo-url>: the clone's origin, to which the README's `git push` sent the run; the model
    # lands beside the copy, as on a teammate's machine.
    dest = ctx.tmp / "teammate" / "model.onnx"
    dest.parent.mkdir(exist_ok=True)
    url = str(ctx.tmp / "origin.git")
    return [[*shlex.split(part.replace("<repo-url>", url)), "-o", str(dest)]]


def _paths_beside_copy(ctx: Ctx, part: str) -> list[list[str]]:
    # An absolute path, alone or as a `key=/path` value (the team's remote folder, your photos),
    # becomes the folder of that name beside the copy: the test reads and writes nowhere else.
    def beside(match: re.Match[str]) -> str:
        return (match[1] or "") + str(ctx.tmp / Path(match[2]).name)

    return [[re.sub(r"^([^/=]*=)?(/.*)$", beside, a) for a in shlex.split(part)]]


def _serve_teammates_model(ctx: Ctx, part: str) -> list[list[str]]:
    # model.onnx: the file `dvc artifacts get` fetched, which the test put beside the copy.
    fetched = ctx.tmp / "teammate" / "model.onnx"
    assert fetched.is_file(), f"`{ctx.command}` runs before any `dvc artifacts get`"
    return [shlex.split(part.replace("model.onnx", str(fetched)))]


def _as_written(ctx: Ctx, part: str) -> list[list[str]]:
    # The URL is a web page's origin that the server names in its answers, not one it fetches.
    return [shlex.split(part)]


# Commands with placeholders, usage synopses or paths outside the project, and the concrete
# commands run for them (then mapped like any other `uv run` command).
SUBSTITUTE: dict[str, Callable[[Ctx, str], list[list[str]]]] = {
    "uv run visionpipe predict IMAGE_OR_DIR_OR_GLOB... [--model models/model.onnx] [--topk 3] "
    "[--backend onnx|torch] [--batch-size 64] [--json out.json] [--csv out.csv] "
    "[--grid out.png]": _predict_synopsis,
    "uv run dvc plots diff <exp-a> <exp-b>": _two_experiments,
    "uv run dvc get . logs/tensorboard --rev <exp-a> -o logs/compare/<exp-a>": _two_experiments,
    "uv run dvc get . logs/tensorboard --rev <exp-b> -o logs/compare/<exp-b>": _two_experiments,
    "uv run dvc exp run -S data.dataset=imagefolder -S data.source=/home/me/photos": (
        _paths_beside_copy
    ),
    "uv run dvc remote add -d storage /mnt/team/visionpipe-cache": _paths_beside_copy,
    "uv run dvc exp push origin <exp>": _last_experiment,
    "uv run dvc exp pull origin <exp>": _last_experiment,
    "uv run dvc artifacts get <repo-url> image-classifier-onnx": _artifact_from_origin,
    "uv run dvc exp apply <exp>": _last_experiment,
    "uv run dvc metrics diff HEAD <exp> --all --targets metrics/per_class.json": _last_experiment,
    "uv run visionpipe serve --model model.onnx": _serve_teammates_model,
    "uv run visionpipe serve --allow-origin http://localhost:3000": _as_written,
}


def plan(part: str) -> Step | str:
    """How the test runs one command of a page (one side of an `&&`), or why it cannot."""
    if part in SETUP:
        return SETUP[part]
    if part in SUBSTITUTE:
        return functools.partial(_run_substitutes, SUBSTITUTE[part], part)
    if PLACEHOLDER.search(part):
        return "has a placeholder or usage synopsis: give concrete values for it in SUBSTITUTE"
    try:
        tokens = shlex.split(part)
    except ValueError as e:
        return f"does not parse as a shell command ({e})"
    if any(t in SHELL_SYNTAX or "$(" in t or "`" in t for t in tokens):
        return "uses pipes, redirections or command substitution, which this test does not run"
    env_extra, argv = _split_env(tokens)
    if any("$" in t.replace("$PWD", "") for t in [*env_extra.values(), *argv]):
        return "uses a shell variable other than $PWD"
    if any(t.startswith(("/", "~")) or "://" in t for t in argv):
        return "names a path outside the project or a URL: map it to a local one in SUBSTITUTE"
    if argv[:2] != ["uv", "run"] or len(argv) < 3 or argv[2] not in UV_RUN:
        return f"is not `uv run` of a tool this test knows how to run ({', '.join(UV_RUN)})"
    return lambda ctx: _uv_run(ctx, argv, env_extra)


def _run_substitutes(
    substitute: Callable[[Ctx, str], list[list[str]]], part: str, ctx: Ctx
) -> None:
    for argv in substitute(ctx, part):
        _uv_run(ctx, argv, {})


def _split_env(tokens: list[str]) -> tuple[dict[str, str], list[str]]:
    """Leading `NAME=value` words (environment for the command) and the command itself."""
    extra: dict[str, str] = {}
    while tokens and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tokens[0]):
        name, value = tokens[0].split("=", 1)
        extra[name] = value
        tokens = tokens[1:]
    return extra, tokens


def _uv_run(ctx: Ctx, argv: list[str], env_extra: dict[str, str]) -> None:
    """`uv run TOOL ARGS` as this venv runs it, without re-syncing; $PWD is the project copy."""
    assert argv[:2] == ["uv", "run"], argv

    def expand(s: str) -> str:
        return s.replace("$PWD", str(ctx.repo))

    UV_RUN[argv[2]](
        ctx, [expand(a) for a in argv[3:]], {k: expand(v) for k, v in env_extra.items()}
    )


def _run(
    ctx: Ctx, cmd: list[str], env_extra: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run one command; a non-zero exit fails the test, naming the page's command."""
    started = time.perf_counter()
    # Output goes to files, not pipes: the worker `dvc queue start` leaves behind inherits them,
    # and reading a pipe to its end would wait for that worker to exit.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        code = subprocess.run(
            cmd,
            cwd=cwd or ctx.repo,
            env={**env(), **(env_extra or {})},
            stdout=out,
            stderr=err,
            text=True,
            timeout=900,
            check=False,
        ).returncode
        out.seek(0)
        err.seek(0)
        proc = subprocess.CompletedProcess(cmd, code, out.read(), err.read())
    shown = shlex.join(cmd[2:] if cmd[0] == sys.executable else cmd)
    ctx.timings.append((shown, time.perf_counter() - started))
    assert proc.returncode == 0, (
        f"{ctx.page} command `{ctx.command}` ran as `{shlex.join(cmd)}` and exited"
        f" {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"
    )
    return proc


def _dvc(ctx: Ctx, args: list[str], env_extra: dict[str, str]) -> None:
    if args[:2] == ["exp", "show"] and "--no-pager" not in args:
        # As a terminal shows it without a pager: DVC lays a table out for a pager at full width,
        # and for a terminal at COLUMNS.
        args = [*args, "--no-pager"]
        env_extra = {"COLUMNS": TERMINAL_COLUMNS, **env_extra}
    proc = _run(ctx, [sys.executable, "-m", "dvc", *args], env_extra)
    check = DVC_CHECKS.get(tuple(args[:2])) or DVC_CHECKS.get(tuple(args[:1]))
    if check:
        check(ctx, args, proc)


def _check_exp_run(ctx: Ctx, args: list[str], proc: subprocess.CompletedProcess) -> None:
    if "--queue" in args:
        _record_queued(ctx, args, proc)
    else:
        _check_pipeline_outputs(ctx, args, proc)
        ran = re.findall(r"Ran experiment\(s\): (\S+)", proc.stdout + proc.stderr)
        assert ran, f"`{ctx.command}` names no experiment:\n{proc.stdout}"
        ctx.last_exp = ran[-1]


def _check_pipeline_outputs(ctx: Ctx, args: list[str], proc: subprocess.CompletedProcess) -> None:
    """The workspace holds a full run on the data params.yaml names, whose classes it learned."""
    data = yaml.safe_load((ctx.repo / "params.yaml").read_text())["data"]
    source, dataset = data["source"], data["dataset"]
    raw = json.loads((ctx.repo / "data/raw/source.json").read_text())
    meta = json.loads((ctx.repo / "data/processed/meta.json").read_text())
    if dataset == "imagefolder":  # your own photos: class folders, split by the pipeline
        wanted_file = PACKED_FOLDER  # a folder is packed into one tar
        classes = sorted(p.name for p in Path(source).iterdir() if p.is_dir())
        n_test = meta["counts"]["test"]
    else:
        wanted_file = (
            Path(urllib.parse.urlparse(source).path).name
            if source
            else DATASETS[dataset].official.filename
        )
        classes, n_test = STAND_IN_CLASSES[dataset]
    assert raw["file"] == wanted_file, f"`{ctx.command}` fetched {raw}, expected {wanted_file}"
    assert meta["dataset"] == dataset and meta["classes"] == classes, (
        f"`{ctx.command}` trained on {raw['file']} (data.source is {source!r}), not on the"
        f" {dataset} data: it learned the classes {meta['classes']}, expected {classes}"
    )
    evaluation = json.loads((ctx.repo / paths.EVAL_METRICS).read_text())
    assert evaluation["test_images"] == n_test, f"`{ctx.command}` evaluated {evaluation}"
    assert 0.0 <= evaluation["test_acc"] <= 1.0, evaluation
    preds = json.loads((ctx.repo / "predictions/predictions.json").read_text())
    assert len(preds) == len(classes) and all(p["error"] is None for p in preds), preds
    assert any((ctx.repo / "logs/tensorboard").glob("events.out.tfevents.*")), "no event files"


def _record_queued(ctx: Ctx, args: list[str], proc: subprocess.CompletedProcess) -> None:
    names = re.findall(r"Queued experiment '([^']+)'", proc.stdout + proc.stderr)
    sets = [b for a, b in itertools.pairwise(args) if a in ("-S", "--set-param")]
    sweep = {key: yaml.safe_load(f"[{values}]") for key, values in (s.split("=", 1) for s in sets)}
    expected = 1
    for values in sweep.values():
        expected *= len(values)
    assert len(names) == expected, f"`{ctx.command}` queued {names}, expected {expected} runs"
    ctx.queued += names
    ctx.sweeps.append((names, sweep))


def _queue_statuses(ctx: Ctx) -> dict[str, str]:
    out = _run(ctx, [sys.executable, "-m", "dvc", "queue", "status"]).stdout
    rows = (line.split() for line in out.splitlines())
    return {row[1]: row[-1] for row in rows if len(row) >= 4 and row[1] in ctx.queued}


def _wait_for_queue(ctx: Ctx, args: list[str], proc: subprocess.CompletedProcess) -> None:
    """`dvc queue start` returns at once; wait for its workers, then check every queued run."""
    assert ctx.queued, f"`{ctx.command}` ran before any `dvc exp run --queue`"
    deadline = time.monotonic() + QUEUE_TIMEOUT_S
    statuses: dict[str, str] = {}
    asked = time.monotonic()
    while True:
        all_refs = set(ctx.queued) <= _experiment_refs(ctx)
        if all_refs or time.monotonic() - asked >= QUEUE_STATUS_S:
            statuses, asked = _queue_statuses(ctx), time.monotonic()
            if not any(s in ("Queued", "Running") for s in statuses.values()):
                break
        assert time.monotonic() < deadline, f"queue not done in {QUEUE_TIMEOUT_S} s: {statuses}"
        time.sleep(QUEUE_POLL_S)
    failed = {name: s for name, s in statuses.items() if s != "Success"}
    if failed:
        logs = "\n".join(
            f"--- dvc queue logs {name}\n"
            + run(
                [sys.executable, "-m", "dvc", "queue", "logs", name], ctx.repo, check=False
            ).stdout[-4000:]
            for name in failed
        )
        pytest.fail(f"queued experiments did not succeed: {statuses}\n{logs}")
    exps = _experiments(ctx)
    for names, sweep in ctx.sweeps:
        runs = [exps[name] for name in names if name in exps]
        # One run per combination of the -S value lists.
        ran = sorted(tuple(_param(r, key) for key in sweep) for r in runs)
        assert ran == sorted(itertools.product(*sweep.values())), (sorted(exps), sweep, ran)
        for r in runs:
            eval_metrics = r["metrics"][str(paths.EVAL_METRICS)]["data"]
            assert "test_acc" in eval_metrics, r["metrics"]


def _experiment_refs(ctx: Ctx) -> set[str]:
    """Names of the experiments with a git ref (refs/exps/.../<name>): the runs DVC has saved."""
    refs = ["git", "for-each-ref", "--format=%(refname:lstrip=-1)", "refs/exps"]
    return set(run(refs, ctx.repo).stdout.split())


def _experiments(ctx: Ctx) -> dict[str, dict[str, Any]]:
    """Name -> data (params, metrics) of every experiment, from `dvc exp show --json`."""
    shown = json.loads(_run(ctx, [sys.executable, "-m", "dvc", "exp", "show", "--json"]).stdout)
    return {
        rev["name"]: rev["data"]
        for baseline in shown
        for exp in baseline.get("experiments") or []
        for rev in exp["revs"]
        if rev.get("name") and rev.get("data")
    }


def _param(data: dict[str, Any], dotted: str) -> Any:
    value = data["params"]["params.yaml"]["data"]
    for key in dotted.split("."):
        value = value[key]
    return value


def _check_exp_show(ctx: Ctx, args: list[str], proc: subprocess.CompletedProcess) -> None:
    for name in [*ctx.queued, "workspace"]:
        assert name in proc.stdout, f"`{ctx.command}` does not list {name}:\n{proc.stdout}"
    if "--only-changed" in args:
        # The README's sweep (queued runs: State and Executor columns too) in 120 columns shows
        # the headline metrics and the changed lr.
        _assert_fits_terminal(ctx, proc.stdout, "train.lr")
    # The headline metrics lead the table, the data counts after them: a sweep that changes the
    # data (and so the counts) still shows test_acc within the terminal's width.
    columns = _run(ctx, [sys.executable, "-m", "dvc", "exp", "show", "--csv"]).stdout
    header = columns.splitlines()[0].split(",")
    assert max(map(header.index, EXP_SHOW_HEADLINE)) < header.index("images.train"), header


def _assert_fits_terminal(ctx: Ctx, shown: str, param: str) -> None:
    """`shown` (the command's table in TERMINAL_COLUMNS; DVC folds what does not fit into a `…`
    column) has every headline metric that differs between the rows, `param`, no wider line."""
    csv = [sys.executable, "-m", "dvc", "exp", "show", "--only-changed", "--csv"]
    changed = _run(ctx, csv).stdout.splitlines()[0].split(",")
    wanted = [c for c in EXP_SHOW_HEADLINE if c in changed] + [param]
    assert {"test_acc", "test_loss"} <= set(wanted), f"the sweep changed no test metric: {changed}"
    lines = shown.splitlines()
    header = next(line for line in lines if "Experiment" in line)
    for column in wanted:
        assert column in header.split(), f"{column} is folded away:\n{shown}"
    assert max(len(line.rstrip()) for line in lines) <= int(TERMINAL_COLUMNS), shown


def _check_metrics(ctx: Ctx, args: list[str], proc: subprocess.CompletedProcess) -> None:
    shown = "macro_f1" if "metrics/per_class.json" in args else "test_acc"
    assert shown in proc.stdout, f"`{ctx.command}` printed:\n{proc.stdout}"


def _check_params_diff(ctx: Ctx, args: list[str], proc: subprocess.CompletedProcess) -> None:
    # Every param that differs between HEAD and the workspace is listed.
    head = yaml.safe_load(run(["git", "show", "HEAD:params.yaml"], ctx.repo).stdout)
    work = yaml.safe_load((ctx.repo / "params.yaml").read_text())
    changed = diff_keys(head, work)
    assert changed and all(k in proc.stdout for k in changed), (changed, proc.stdout)


def _check_plots(ctx: Ctx, args: list[str], proc: subprocess.CompletedProcess) -> None:
    out = args[args.index("-o") + 1] if "-o" in args else "dvc_plots"
    page = ctx.repo / out / "index.html"
    html = page.read_text()
    assert "vegaEmbed" in html and "cdn.jsdelivr" not in html, "plots page is not the offline one"
    revs = [a for a in args[2:] if not a.startswith("-") and a != out] if args[1] == "diff" else []
    for rev in revs:
        assert rev in html, f"`{ctx.command}`: {page} does not show {rev}"
    page.unlink()  # the next plots command must write its own


def _check_push(ctx: Ctx, args: list[str], proc: subprocess.CompletedProcess) -> None:
    listed = _run(ctx, [sys.executable, "-m", "dvc", "config", "--list"]).stdout.splitlines()
    config = dict(line.split("=", 1) for line in listed if "=" in line)
    remote = Path(config[f"remote.{config['core.remote']}.url"])
    assert any(p.is_file() for p in remote.rglob("*")), f"`{ctx.command}` left {remote} empty"


def _check_artifact(ctx: Ctx, args: list[str], proc: subprocess.CompletedProcess) -> None:
    import onnx

    dest = Path(args[args.index("-o") + 1])
    fetched = onnx.load(str(dest))
    props = {p.key: p.value for p in fetched.metadata_props}
    assert json.loads(props["classes"]) == STAND_IN_CLASSES["cifar10"][0], props
    pushed = run(["git", "show", "HEAD:dvc.lock"], ctx.repo).stdout
    assert hashlib.md5(dest.read_bytes()).hexdigest() in pushed, "not the committed model"


def _check_exp_push(ctx: Ctx, args: list[str], proc: subprocess.CompletedProcess) -> None:
    refs = run(["git", "ls-remote", args[2]], ctx.repo).stdout
    assert f"/{args[3]}\n" in refs, f"`{ctx.command}`: {args[2]} has no ref for {args[3]}:\n{refs}"


def _check_get(ctx: Ctx, args: list[str], proc: subprocess.CompletedProcess) -> None:
    # An experiment's TensorBoard logs, fetched as one run: the event file in the folder itself
    # (not nested a level down), which git leaves alone.
    dest = ctx.repo / args[args.index("-o") + 1]
    files = [p.name for p in dest.iterdir()]
    assert files and all(f.startswith("events.out.tfevents.") for f in files), (
        f"`{ctx.command}` left {sorted(dest.rglob('*'))}"
    )
    status = run(["git", "status", "--porcelain", "--untracked-files=all"], ctx.repo).stdout
    assert str(dest.relative_to(ctx.repo)) not in status, f"git sees the fetched logs:\n{status}"


DVC_CHECKS: dict[tuple[str, ...], Callable[[Ctx, list[str], subprocess.CompletedProcess], None]] = {
    ("repro",): _check_pipeline_outputs,
    ("exp", "run"): _check_exp_run,
    ("queue", "start"): _wait_for_queue,
    ("exp", "show"): _check_exp_show,
    ("metrics", "show"): _check_metrics,
    ("metrics", "diff"): _check_metrics,
    ("params", "diff"): _check_params_diff,
    ("plots", "show"): _check_plots,
    ("plots", "diff"): _check_plots,
    ("push",): _check_push,
    ("exp", "push"): _check_exp_push,
    ("artifacts", "get"): _check_artifact,
    ("get",): _check_get,
}


def _visionpipe_serve(ctx: Ctx, args: list[str], env_extra: dict[str, str]) -> None:
    """`visionpipe serve` runs until stopped: start it on a free port (`--port 0`), have it
    classify the dog photo, check that it serves the model file it names (for the pipeline's
    model: the one dvc.lock records), stop it with Ctrl-C."""
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "visionpipe.cli", *args, "--port", "0"]
    log_path = ctx.tmp / "serve.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            cmd,
            cwd=ctx.repo,
            env={**env(), **env_extra},
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        found = re.search(r"(http://\S+:\d+)/", line)
        assert found, f"`{ctx.command}` printed no address: {line!r}\n{log_path.read_text()}"
        no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with no_proxy.open(f"{found[1]}/model", timeout=60) as response:
            info = json.loads(response.read())
        dog = (ctx.tmp / "shared" / "samples" / "dog.png").read_bytes()
        # With --allow-origin, asked as a page of that origin: the answer must name it.
        origin = args[args.index("--allow-origin") + 1] if "--allow-origin" in args else None
        headers = {"Content-Type": "image/png", **({"Origin": origin} if origin else {})}
        ask = urllib.request.Request(f"{found[1]}/predict", dog, headers)
        with no_proxy.open(ask, timeout=60) as response:
            (answer,) = json.loads(response.read())["predictions"]
            allowed = response.headers.get("Access-Control-Allow-Origin")
    finally:
        server.send_signal(signal.SIGINT)
        code = server.wait(timeout=60)
    assert code == 0, f"`{ctx.command}` exited {code} on Ctrl-C:\n{log_path.read_text()}"
    assert answer["top"] and {t["class"] for t in answer["top"]} <= set(info["classes"]), answer
    assert allowed == origin, f"`{ctx.command}`: Access-Control-Allow-Origin {allowed!r}"
    served = ctx.repo / info["model"]
    assert hashlib.md5(served.read_bytes()).hexdigest() == info["md5"], info
    if served == ctx.repo / paths.ONNX_MODEL:
        lock = yaml.safe_load((ctx.repo / "dvc.lock").read_text())
        outs = {o["path"]: o["md5"] for o in lock["stages"]["export"]["outs"]}
        assert outs[str(paths.ONNX_MODEL)] == info["md5"], "not the model dvc.lock records"
    ctx.timings.append((shlex.join(cmd[2:]), time.perf_counter() - started))


def _visionpipe(ctx: Ctx, args: list[str], env_extra: dict[str, str]) -> None:
    if args[0] == "serve":
        _visionpipe_serve(ctx, args, env_extra)
        return
    proc = _run(ctx, [sys.executable, "-m", "visionpipe.cli", *args], env_extra)
    if args[0] == "params":
        # params.yaml written from conf/ with the arguments as overrides: what -S would give.
        composed = compose(args[1:], ctx.repo / "conf")
        assert yaml.safe_load((ctx.repo / "params.yaml").read_text()) == composed, proc.stdout
        return
    assert args[0] == "predict", f"no check written for `visionpipe {args[0]}`"
    assert "ERROR" not in proc.stdout, proc.stdout
    lines = [line for line in proc.stdout.splitlines() if "%" in line]
    inputs = list(itertools.takewhile(lambda a: not a.startswith("-"), args[1:]))
    files = [a for a in inputs if (ctx.repo / a).is_file()]
    options = {a: b for a, b in itertools.pairwise(args) if a.startswith("--")}
    for f in files:
        assert any(line.startswith(f"{f}: ") for line in lines), f"no prediction for {f}"
    assert len(lines) >= len(files), proc.stdout
    for flag in ("--json", "--csv", "--grid"):
        if flag in options:
            assert (ctx.repo / options[flag]).stat().st_size > 0, f"{flag} wrote nothing"
    if "--json" in options:
        assert len(json.loads((ctx.repo / options["--json"]).read_text())) == len(lines)


def _pytest(ctx: Ctx, args: list[str], env_extra: dict[str, str]) -> None:
    # Not the whole suite from inside it: the same options, collecting one small file of the
    # real tests (in the checkout; the copy has no tests/), which proves pytest, the project's
    # pytest settings and the options (a -m expression) work.
    cmd = [sys.executable, "-m", "pytest", *args, "--collect-only", "-q", "-p", "no:cacheprovider"]
    proc = _run(ctx, [*cmd, "tests/unit/test_config.py"], env_extra, cwd=ROOT)
    assert "tests/unit/test_config.py::" in proc.stdout, proc.stdout


def _ruff(ctx: Ctx, args: list[str], env_extra: dict[str, str]) -> None:
    # The same subcommand and options, on this file rather than `.`: the project's lint state
    # is CI's business, and another change in progress must not fail this test.
    here = str(Path(__file__).relative_to(ROOT))
    targets = [here if a == "." else a for a in args]
    if targets == args:
        targets.append(here)
    _run(ctx, [sys.executable, "-m", "ruff", *targets], env_extra, cwd=ROOT)


def _tensorboard(ctx: Ctx, args: list[str], env_extra: dict[str, str]) -> None:
    # The server runs until stopped: start it on a free port (`--port 0`, added so that a
    # TensorBoard already running does not clash), ask it for its runs, stop it. Its runs are
    # the folders holding event files, named relative to the logdir ("." for the logdir itself).
    logdir = ctx.repo / args[args.index("--logdir") + 1]
    expected = {str(f.parent.relative_to(logdir)) for f in logdir.rglob("events.out.tfevents.*")}
    assert expected, f"{logdir} holds no event files"
    log_path = ctx.tmp / "tensorboard.log"
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "tensorboard.main", *args, "--port", "0"]
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            cmd, cwd=ctx.repo, env={**env(), **env_extra}, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 120
        while not (found := re.search(r"(http://\S+:\d+)/", log_path.read_text())):
            assert server.poll() is None, f"`{ctx.command}` exited:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"no server URL:\n{log_path.read_text()}"
            time.sleep(0.5)
        no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with no_proxy.open(f"{found.group(1)}/data/runs", timeout=60) as response:
            runs = json.loads(response.read())
        assert set(runs) == expected, f"TensorBoard shows the runs {runs} of {logdir}"
    finally:
        server.terminate()
        server.wait(timeout=30)
    ctx.timings.append((shlex.join(cmd[2:]), time.perf_counter() - started))


UV_RUN: dict[str, Callable[[Ctx, list[str], dict[str, str]], None]] = {
    "dvc": _dvc,
    "visionpipe": _visionpipe,
    "pytest": _pytest,
    "ruff": _ruff,
    "tensorboard": _tensorboard,
}


def _jpeg(rng: np.random.Generator, k: int, size: int) -> bytes:
    """A noisy image whose colour depends on its class index `k` (so the classes are learnable)."""
    base = np.array([(k * 97 + 30) % 256, (k * 53 + 80) % 256, (k * 151 + 160) % 256])
    pixels = np.clip(base + rng.integers(-40, 41, (size, size, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=75)
    return buf.getvalue()


def make_shared(shared: Path) -> None:
    """Tiny files named as the README's ../shared ones: the two datasets and the dog photo."""
    rng = np.random.default_rng(0)
    (shared / "datasets").mkdir(parents=True)
    with zipfile.ZipFile(shared / "datasets" / "cifar10-jpeg.zip", "w") as z:
        for (split, n), (k, cls) in itertools.product(CIFAR_PER_CLASS.items(), enumerate(CLASSES)):
            for i in range(n):
                z.writestr(f"cifar10-jpeg/{split}/{cls}/{i:04d}.jpg", _jpeg(rng, k, 32))
    # The official zip's exact file counts: the mirror's layout check demands them.
    classes = STAND_IN_CLASSES["hymenoptera"][0]
    with zipfile.ZipFile(shared / "datasets" / HYMENOPTERA.filename, "w") as z:
        for (split, cls), n in HYMENOPTERA.layout.items():
            for i in range(n):
                name = f"{HYMENOPTERA.root}/{split}/{cls}/{i:04d}.jpg"
                z.writestr(name, _jpeg(rng, classes.index(cls), 24))
    (shared / "samples").mkdir()
    dog = np.clip(np.array([150, 110, 70]) + rng.integers(-30, 31, (44, 60, 3)), 0, 255)
    Image.fromarray(dog.astype(np.uint8)).save(shared / "samples" / "dog.png")


def make_photos(folder: Path) -> None:
    """Class folders of JPEGs standing in for the docs' /home/me/photos."""
    rng = np.random.default_rng(1)
    for k, (cls, n) in enumerate(PHOTO_CLASSES.items()):
        (folder / cls).mkdir(parents=True)
        for i in range(n):
            (folder / cls / f"IMG_{i:04d}.jpg").write_bytes(_jpeg(rng, k, 40))


def shrink_recipes(repo: Path) -> None:
    """The copy's recipes train for TINY_RECIPE_EPOCHS epochs, committed as the copy's own."""
    for path in (repo / "conf" / "recipe").glob("*.yaml"):
        text = path.read_text()
        path.write_text(re.sub(r"(?m)^(  epochs:) \d+$", rf"\1 {TINY_RECIPE_EPOCHS}", text))
    run(["git", "commit", "-qam", "tiny recipes"], repo)


def _runs_once(part: str) -> bool:
    argv = _split_env(shlex.split(part))[1]
    return argv[:2] == ["uv", "run"] and len(argv) > 2 and argv[2] in RUN_ONCE


def test_commands_parse_from_shell_fences_only() -> None:
    markdown = (
        "text `uv run nope`\n```\ndiagram ──> here\n```\n"
        "```sh\n# a whole-line comment\n\nuv run dvc repro      # trailing comment\n"
        "uv run visionpipe predict a.png \\\n    --topk 3 \\\n    --json 'x #y.json'\n```\n"
        "```python\nprint('not shell')\n```\n"
        "```bash\nA=1 uv run dvc exp run -S 'train.lr=0.1,0.01' && uv run dvc queue start\n```\n"
    )
    assert shell_commands(markdown) == [
        "uv run dvc repro",
        "uv run visionpipe predict a.png --topk 3 --json 'x #y.json'",
        "A=1 uv run dvc exp run -S 'train.lr=0.1,0.01' && uv run dvc queue start",
    ]
    assert _parts(shell_commands(markdown)[-1])[1] == "uv run dvc queue start"


def test_every_docs_page_runs() -> None:
    pages = set(DOCS.glob("*.md"))
    assert pages == set(PAGES[1:]), "list each docs page in PAGES, in the order its commands run"


def _anchor(heading: str) -> str:
    """The `#fragment` GitHub gives a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_pages_resolve() -> None:
    # The reference moved into docs/: a link to a moved or renamed page or section fails here.
    broken = []
    for page in PAGES:
        text = re.sub(r"(?ms)^```.*?^```", "", page.read_text())  # no links inside code blocks
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if "://" in target:
                continue
            path, _, fragment = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif fragment and dest.suffix == ".md":
                headings = re.findall(r"(?m)^#+ (.+)$", dest.read_text())
                if fragment not in {_anchor(h) for h in headings}:
                    broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, "links that lead nowhere:\n" + "\n".join(broken)


def test_the_commands_paste_into_zsh_as_they_are() -> None:
    """macOS's shell, zsh, runs a `#` as a command unless `interactivecomments` is set, and its
    `->` as a redirection: what a block's command means is said in the prose around it."""
    commented = [
        f"{page.relative_to(ROOT)}: {line}"
        for page in (*PAGES, ROOT / "bench" / "README.md")
        for fence, body in re.findall(r"(?ms)^```(\w*)\n(.*?)^```", page.read_text())
        if fence in SHELL_FENCES
        for line in body.splitlines()
        if re.search(r"(^|\s)#", line)
    ]
    assert not commented, "a `# comment` in a shell block:\n" + "\n".join(commented)


def test_every_command_has_a_rule() -> None:
    parts = page_parts()
    for page in PAGES:
        assert page.is_file(), f"PAGES names {page}, which does not exist"
    assert any(page == "README.md" for page, _ in parts), f"no ```sh commands found in {README}"
    unmapped = [
        f"{page}: `{part}` {why}" for page, part in parts if isinstance(why := plan(part), str)
    ]
    assert not unmapped, "commands this test cannot run:\n" + "\n".join(unmapped)
    assert set(SETUP) | set(SUBSTITUTE) <= {part for _, part in parts}, (
        "SETUP/SUBSTITUTE name commands no page has any more: remove them"
    )


# The README's walk starts from a fresh clone; the docs pages' walk from another, and needs
# nothing the README's commands left, so the two run on both cores at once.
WALKS = {"readme": PAGES[:1], "docs": PAGES[1:]}


@pytest.mark.slow
@pytest.mark.parametrize("walk", list(WALKS))
def test_every_command_runs_in_order(tmp_path: Path, walk: str) -> None:
    steps = [(page, part, plan(part)) for page, part in page_parts(WALKS[walk])]
    unmapped = [f"{page}: `{part}` {step}" for page, part, step in steps if isinstance(step, str)]
    assert not unmapped, "commands this test cannot run:\n" + "\n".join(unmapped)

    make_shared(tmp_path / "shared")
    make_photos(tmp_path / PHOTOS)
    # The README's first `dvc repro` fetches the official CIFAR-10 URL, unreachable in tests, so
    # the copy starts with data.source at the stand-in (absolute, as queued runs need); the
    # download over HTTP is covered by test_pipeline_e2e.
    source = tmp_path / "shared" / "datasets" / "cifar10-jpeg.zip"
    params = {"data": {"source": str(source)}, **TINY_PARAMS}
    ctx = Ctx(tmp=tmp_path, repo=make_project(tmp_path / "repo", params))
    shrink_recipes(ctx.repo)
    if walk == "docs":
        _clone(ctx)  # the README's first step; the team page pushes to the clone's origin
    started = time.perf_counter()
    ran: set[str] = set()
    report: list[str] = []
    try:
        for page, part, step in steps:
            assert not isinstance(step, str)
            if part in ran and _runs_once(part):
                report.append(f"{'':7}    {page}: {part}  (ran above)")
                continue
            ran.add(part)
            ctx.page, ctx.command = page, part
            first, step_started = len(ctx.timings), time.perf_counter()
            step(ctx)
            report.append(f"{time.perf_counter() - step_started:7.1f} s  {page}: {part}")
            report += [f"{s:15.1f} s  {cmd}" for cmd, s in ctx.timings[first:]]
    finally:
        if ctx.queued:  # test cleanup, not a page's command: no worker outlives the test
            run([sys.executable, "-m", "dvc", "queue", "stop", "--kill"], ctx.repo, check=False)
        print(f"the pages' commands took {time.perf_counter() - started:.0f} s:")
        print("\n".join(report))


def test_the_readme_s_machine_file_holds_only_this_machine_s_settings() -> None:
    # conf/local/ is git-ignored: a data key there is missing from a teammate's composition,
    # whose `dvc exp run` then re-runs from the download instead of sharing this dvc.lock.
    fences = re.findall(r"```yaml\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    machine = [yaml.safe_load(f) for f in fences if "data_root" in f]
    assert machine, "the README shows conf/local/machine.yaml"
    assert all(set(m) == {"launch"} for m in machine), machine
