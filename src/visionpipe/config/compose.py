"""params.yaml composed from conf/ (config.yaml, recipe/<name>.yaml, local/) with Hydra, as
`dvc exp run -S` composes it; and which keys params.yaml holds that conf/ would not give it, or
that an experiment drops from its baseline commit."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import yaml

from visionpipe import dvc_command
from visionpipe.config import DEFAULT_PARAMS, MISSING, in_experiment, lookup
from visionpipe.paths import committed_yaml

CONF_DIR = Path("conf")  # Hydra's config dir (`dvc config hydra`): config.yaml, recipe/, local/
NO_LOCAL = "~local@_global_"  # the override that leaves conf/local/machine.yaml out


def compose_yaml(overrides: list[str], conf_dir: Path = CONF_DIR) -> str:
    """conf/ composed with Hydra override strings (`train.lr=0.1`, `recipe=fast`): the text
    `dvc exp run -S` writes to params.yaml, made the same way (DVC's compose_and_dump)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(conf_dir.resolve()), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    OmegaConf.resolve(cfg)
    return OmegaConf.to_yaml(cfg)


SHIPPED_RECIPE = "tutorial"  # what conf/config.yaml chooses, and labels, as shipped


def warn_unchosen_recipe(recipe: str, conf_dir: Path = CONF_DIR) -> bool:
    """Warn where conf/config.yaml's `recipe:` line was edited to a recipe that its defaults
    entry `- recipe: NAME` does not choose, and this run (composing `recipe`) does not run: the
    line is the label each recipe's file sets, so an edit of it alone changes nothing. (A team
    that set the defaults entry alone kept the shipped label, committed as it is: nothing to
    say.) Whether it warned."""
    path = conf_dir / "config.yaml"
    try:
        conf = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeError, yaml.YAMLError):
        return False  # composing it says what is wrong
    if not isinstance(conf, dict):
        return False
    defaults = conf.get("defaults") if isinstance(conf.get("defaults"), list) else []
    chosen = next((d["recipe"] for d in defaults if isinstance(d, dict) and "recipe" in d), None)
    label = conf.get("recipe")
    # Only a run that composed the defaults entry's recipe: one given by -S chose it itself.
    if not isinstance(label, str) or label == chosen or recipe != chosen:
        return False
    committed = committed_yaml("HEAD", path) or {}
    if label == SHIPPED_RECIPE == committed.get("recipe", SHIPPED_RECIPE):
        return False  # the label as shipped and committed: the defaults entry was what changed
    recipes = sorted(p.stem for p in (conf_dir / "recipe").glob("*.yaml"))
    if label not in recipes:
        logging.getLogger(__name__).warning(
            "%s: `recipe: %s` names no recipe of %s (%s), and chooses none: the line `- recipe:"
            " %s` under `defaults:` does",
            *(path.as_posix(), label, (conf_dir / "recipe").as_posix(), ", ".join(recipes), chosen),
        )
        return True
    # `dvc repro` reads params.yaml: the defaults entry counts once params.yaml is composed again.
    fix = (
        f"; for one experiment, `-S recipe={label}`"
        if in_experiment()
        else " and compose params.yaml again (`uv run visionpipe params`, which `dvc repro` runs"
        f" on); for one experiment, `uv run dvc exp run -S recipe={label}`"
    )
    logging.getLogger(__name__).warning(
        "%s: `recipe: %s` does not choose the recipe, the line `- recipe: %s` under `defaults:`"
        " does, and this run composes %s: to compose %s by default, set that line to"
        " `- recipe: %s`%s",
        *(path.as_posix(), label, chosen, recipe, label, label, fix),
    )
    return True


def compose(overrides: list[str], conf_dir: Path = CONF_DIR) -> dict[str, Any]:
    """conf/ composed with Hydra override strings, as a plain mapping."""
    return yaml.safe_load(compose_yaml(overrides, conf_dir))


def drift(raw: dict[str, Any], composed: dict[str, Any] | None = None) -> list[str]:
    """The dotted keys where params.yaml differs from conf/ composed with its recipe (`composed`,
    where the caller has it), but for the launch settings (machine-local by design)."""
    if composed is None:
        composed = compose([f"recipe={raw.get('recipe', 'tutorial')}"])
    return [k for k in diff_keys(raw, composed) if not k.startswith("launch.")]


def diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = [*a, *(k for k in b if k not in a)]
        return [d for k in keys for d in diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def warn_drift(path: Path = DEFAULT_PARAMS) -> list[str]:
    """Warn of the values params.yaml holds that conf/ does not give it (a hand edit the next
    `dvc exp run` would drop, -S or not); outside `dvc exp run`, whose -S values are exactly such
    values. Returns the keys warned of."""
    if in_experiment() or not (CONF_DIR / "config.yaml").is_file():
        return []
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    keys = drift(raw) if isinstance(raw, dict) else []
    if keys:
        logging.getLogger(__name__).warning(
            "%s differs from conf/ in %s (a hand edit, the last experiment's -S values, "
            "`visionpipe params key=value`, or conf/ changed since params.yaml was composed). "
            "Running %s as it is; the next "
            "`dvc exp run` rebuilds it from conf/ even without -S, and drops these values: to "
            "keep them, put them in conf/config.yaml, or run the experiment with "
            "`dvc exp run --no-hydra`, which takes %s as it is",
            path,
            ", ".join(keys[:8]) + (" ..." if len(keys) > 8 else ""),
            path,
            path,
        )
    return keys


def _value(tree: Any, key: str) -> Any:
    """The value at dotted `key` of a params mapping; None where it has none."""
    value = lookup(tree, key.split("."))
    return None if value is MISSING else value


def _conf_at(rev: str, tmp: Path) -> Path:
    """conf/ as commit `rev` holds it, with this machine's conf/local/, written under `tmp`;
    the working tree's conf/ where git cannot give it."""
    # The project may be a subfolder of the repository: its conf/ is `<prefix>conf` there, and
    # `git archive` of a tree runs from the repository's top (from a subfolder it refuses).
    where = subprocess.run(
        ["git", "rev-parse", "--show-toplevel", "--show-prefix"], capture_output=True, text=True
    )
    top, _, prefix = where.stdout.rstrip("\n").partition("\n")
    if where.returncode != 0 or not top:
        return CONF_DIR
    tree = f"{rev}:{prefix}{CONF_DIR.as_posix()}"
    done = subprocess.run(["git", "-C", top, "archive", tree], capture_output=True)
    if done.returncode != 0:
        return CONF_DIR
    conf = tmp / CONF_DIR.name
    try:
        with tarfile.open(fileobj=io.BytesIO(done.stdout)) as tar:
            tar.extractall(conf, filter=_inside)
    except (tarfile.TarError, OSError):
        return CONF_DIR
    if (CONF_DIR / "local").is_dir():  # git-ignored: no commit holds it
        shutil.copytree(CONF_DIR / "local", conf / "local", dirs_exist_ok=True)
    return conf


def _inside(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """tarfile's "data" filter, but a link out of conf/ (a team's recipe linked in from
    elsewhere: no file the commit's conf/ holds) is left out, not the whole conf/."""
    try:
        return tarfile.data_filter(member, dest)
    except tarfile.FilterError:
        return None


def _compose_or(conf: Path, overrides: list[str]) -> dict[str, Any]:
    """`compose` with `conf`, or with the working tree's conf/ where that one does not compose
    (a recipe or key the commit's conf/ lacks)."""
    try:
        return compose(overrides, conf)
    except Exception:  # Hydra's errors have no common base class
        if conf == CONF_DIR:
            raise
        return compose(overrides)


def _dropped_recipe(rev: str, committed: dict[str, Any], recipe: str) -> bool:
    """Whether this experiment composes conf/'s default recipe over a baseline commit whose
    params.yaml holds another that its own conf/ did not give (a `-S recipe=...` run applied and
    committed, or made a branch by `dvc exp branch`): other data, other model, unasked. A
    recipe the commit's conf/ gave (the default changed since) is conf/'s, not dropped."""
    theirs = committed.get("recipe", SHIPPED_RECIPE)
    if theirs == recipe or recipe != compose([]).get("recipe"):
        return False
    conf = committed_yaml(rev, CONF_DIR / "config.yaml")
    defaults = conf.get("defaults", []) if conf else []
    given = next((d["recipe"] for d in defaults if isinstance(d, dict) and "recipe" in d), None)
    return given is not None and given != theirs


def _conf_values(rev: str, base_recipe: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """What commit `rev`'s own conf/ composes for `base_recipe`: without this machine's
    conf/local/ (a value set there, data.source, is not one a commit held), and with it (a
    value it held that conf/local/ gives is conf/'s all the same: the recipe this experiment
    names may set the key, hymenoptera's data.source: null)."""
    local = (CONF_DIR / "local" / "machine.yaml").is_file()
    with tempfile.TemporaryDirectory() as tmp:
        conf = _conf_at(rev, Path(tmp))
        shared = _compose_or(conf, [*base_recipe, NO_LOCAL] if local else base_recipe)
        return shared, (_compose_or(conf, base_recipe) if local else shared)


def _last_written(rev: str, path: Path) -> str | None:
    """The commit at or before `rev` that last changed `path`; None where git cannot say."""
    done = subprocess.run(
        ["git", "log", "-1", "--format=%H", rev, "--", path.as_posix()],
        capture_output=True,
        text=True,
    )
    found = done.stdout.strip()
    return found if done.returncode == 0 and found else None


def _history_ends_at(commit: str) -> bool:
    """Whether this clone's history is cut at `commit` (`git clone --depth N`): the commits
    before it, where params.yaml may have been composed, are not here."""
    where = subprocess.run(
        ["git", "rev-parse", "--git-path", "shallow"], capture_output=True, text=True
    )
    try:
        return commit in Path(where.stdout.strip()).read_text().split()
    except OSError:  # no such file: the whole history is here
        return False


def warn_dropped_baseline(path: Path = DEFAULT_PARAMS) -> list[str]:
    """In `dvc exp run`: warn of the values the baseline commit's params.yaml held that conf/ does
    not give and this experiment replaces with conf/'s, not with values of its own (-S).
    Promoting an experiment the DVC way (`dvc exp apply`, or a run, then a commit) commits its -S
    values in params.yaml alone, and every later `dvc exp run` composes conf/ anew: without a
    word the next experiment would change a value nobody asked it to. Returns the keys warned
    of."""
    rev = os.environ.get("DVC_EXP_BASELINE_REV")
    if not rev or not (CONF_DIR / "config.yaml").is_file():
        return []
    committed = committed_yaml(rev, path)
    current = yaml.safe_load(path.read_text(encoding="utf-8"))
    if committed is None or not isinstance(current, dict):
        return []
    changed = set(diff_keys(committed, current))
    if not changed:
        return []
    # A new value that is not conf/'s came from -S: the experiment asked for it. (A queued run's
    # temporary copy has no git-ignored conf/local/, so its values count as not conf/'s.)
    recipe = current.get("recipe", SHIPPED_RECIPE)
    composed = compose([f"recipe={recipe}"])
    # What the baseline held is judged against the commit's own conf/ (a value conf/ gave it,
    # edited in conf/ since, is no dropped value but the edit). Nor is a key it lacks.
    base_recipe = [f"recipe={committed.get('recipe', 'tutorial')}"]
    shared, mine = _conf_values(rev, base_recipe)
    keys = [
        k
        for k in drift(committed, shared)
        if k in changed
        and lookup(committed, k.split(".")) is not MISSING
        and _value(current, k) == _value(composed, k)
        and _value(committed, k) != _value(mine, k)
    ]
    # conf/ edited and committed without composing params.yaml anew: its values are those of
    # the conf/ it was last composed from, no experiment's.
    written = _last_written(rev, path)
    if keys and written is not None and written != rev:
        then = _conf_values(written, base_recipe)[1]
        keys = [k for k in keys if _value(committed, k) != _value(then, k)]
    elif keys and written is not None and _history_ends_at(written):
        keys = []  # a shallow clone (CI's checkout) lacks where params.yaml was composed
    if recipe != committed.get("recipe", SHIPPED_RECIPE):
        # A recipe the experiment names (-S recipe=fast) is asked for, values and all.
        theirs = set(diff_keys(composed, compose([])))
        keys = [k for k in keys if k not in theirs]
    if _dropped_recipe(rev, committed, recipe):
        keys.insert(0, "recipe")  # its values are the recipe's: named by it, not one by one
    if keys and _first_time(rev, path):
        _say_dropped(rev, path, changes_text(committed, current, keys))
    return keys


def changes_text(old: Any, new: Any, keys: list[str], most: int = 8) -> str:
    """`key: old -> new` for each of `keys` (dotted) of two params mappings; the first `most`."""
    values = [f"{k}: {_shown(old, k)} -> {_shown(new, k)}" for k in keys]
    return ", ".join(values[:most]) + (
        f" and {len(values) - most} more" if len(values) > most else ""
    )


def _shown(tree: Any, key: str) -> str:
    """The value at dotted `key` as params.yaml writes it; (none) where the mapping lacks it."""
    value = lookup(tree, key.split("."))
    return "(none)" if value is MISSING else _yaml(value)


def _say_dropped(rev: str, path: Path, changes: str) -> None:
    """The warning of `warn_dropped_baseline`: `changes` as `changes_text` gives them."""
    logging.getLogger(__name__).warning(
        "the baseline commit %s holds %s values that conf/ does not give (an experiment applied"
        " and committed, or made a branch by `dvc exp branch`?); this experiment composes conf/"
        " and its -S values anew, so it changes %s. To keep the committed values, pass them"
        " with -S (or put them in conf/ and commit). A value you gave with -S that equals"
        " conf/'s is listed too (the two cannot be told apart here): that change is yours",
        rev[:7],
        path,
        changes,
    )


# What the first stage of a run to warn of something wrote (download's, or train's where the
# data stages are cached): the later one stays quiet. `.dvc/tmp/visionpipe-<what>-warned`.
WARNED = Path(".dvc/tmp")


def _first_time(rev: str, path: Path, what: str = "dropped") -> bool:
    """Whether no stage of this run warned of `what` yet; marked so (`_marked`)."""
    if _marked(rev, path, what):
        return False
    _mark(rev, path, what)
    return True


def _run_mark(rev: str, path: Path) -> str:
    """A run: its baseline `rev`; the params file at `path` as `dvc exp run` (or `visionpipe
    params`) wrote it, its content and time (each run, a retry of a failed one too, writes it
    anew; its stages do not); and the DVC process running the stages, whose id DVC keeps in its
    repo lock while it runs them (`dvc repro` after `dvc repro` leaves params.yaml as it is)."""
    import hashlib

    try:
        dvc = (WARNED / "lock").read_text("utf-8").strip()
    except (OSError, UnicodeError):
        dvc = ""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return f"{rev} {digest} {path.stat().st_mtime_ns} {dvc}\n"


def _marked(rev: str, path: Path, what: str) -> bool:
    """Whether a stage of this run warned of `what` already. A stage run by hand outside DVC
    is a run of its own: DVC's lock file then names whatever DVC command ran last."""
    if not os.environ.get("DVC_STAGE"):
        return False
    try:
        return (WARNED / f"visionpipe-{what}-warned").read_text("utf-8") == _run_mark(rev, path)
    except (OSError, UnicodeError):
        return False


def _mark(rev: str, path: Path, what: str) -> None:
    """Note that this run warned of `what` (outside a DVC project, or a stage run by hand
    outside DVC, nowhere: it warns again)."""
    with contextlib.suppress(OSError):
        if WARNED.is_dir() and os.environ.get("DVC_STAGE"):
            (WARNED / f"visionpipe-{what}-warned").write_text(_run_mark(rev, path), "utf-8")


def _yaml(value: Any) -> str:
    """A value as params.yaml writes it: null, true, 0.01, a text as it is; a section as {...}."""
    if isinstance(value, dict):
        return "{...}"
    return value if isinstance(value, str) else json.dumps(value)


def _same(a: Any, b: Any) -> bool:
    """Equal values; paths as the folder they name (`/data/` is `/data`, `~` expanded)."""
    if isinstance(a, str) and isinstance(b, str):
        return os.path.normpath(os.path.expanduser(a)) == os.path.normpath(os.path.expanduser(b))
    return a == b


def warn_unused_local_source(path: Path = DEFAULT_PARAMS) -> bool:
    """Warn where this machine's conf/local/machine.yaml names a data.source that the run of
    params.yaml at `path` does not read: a recipe composed after it sets data.source null
    (`hymenoptera`: its official archive), or, outside `dvc exp run`, params.yaml was composed
    without it (`dvc repro` runs params.yaml as it is). Whether it warned."""
    local = CONF_DIR / "local" / "machine.yaml"
    try:
        given = yaml.safe_load(local.read_text(encoding="utf-8"))
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeError, yaml.YAMLError):
        return False
    mine = _value(given, "data.source") if isinstance(given, dict) else None
    if not isinstance(raw, dict) or _value(raw, "data.source") is not None or not mine:
        return False
    recipe = raw.get("recipe", SHIPPED_RECIPE)
    if _recipe_sets(recipe, "data.source"):
        # Where the archive is looked for already (data_root, DATA_MIRROR), only what is not read.
        root = _value(raw, "launch.data_root") or os.environ.get("DATA_MIRROR")
        advice = (
            ""
            if root
            else f" To have that archive read from a folder of this machine, name the folder in"
            f" {local} as `launch: {{data_root: /abs/folder}}`."
        )
        why = f"the recipe {recipe} sets it so), the official archive.{advice} To train on {mine},"
        fix = (
            "pass -S data.source=... too"
            if in_experiment()
            else f"compose it in: `uv run visionpipe params recipe={recipe} data.source=...`, then"
            " `uv run dvc repro`"
        )
    elif not in_experiment():
        why = f"{path} was composed without {local}). To train on {mine},"
        fix = "run `uv run visionpipe params` (or `uv run dvc exp run`), which composes it in"
    else:
        return False  # -S data.source=null: asked for
    logging.getLogger(__name__).warning(
        "%s sets data.source %s, which this run does not read: its data.source is null (%s %s",
        *(local, mine, why, fix),
    )
    return True


def refuse_missing_sections(raw: Any) -> None:
    """Under DVC, params.yaml lacking a key or whole section a stage of dvc.yaml declares (cut
    from conf/config.yaml, or `-S '~evaluate'`): DVC refuses that stage only as it comes to it,
    after the stages before it have run (training, for `evaluate:`). Download and train say it
    before they run, whatever stage declares it."""
    from visionpipe.config import ConfigError, conf_defaults
    from visionpipe.paths import stages_of

    if not isinstance(raw, dict) or not os.environ.get("DVC_STAGE"):
        return  # a stage run by hand: DVC refuses nothing, and the code's defaults fill in
    stages = stages_of(Path("dvc.yaml"))
    lacking = _lacking(raw, stages, conf_defaults() if "about" in raw else None)
    # Only then what the DVC command runs (its command line, parsed: a fifth of a second):
    # `dvc repro train` never reaches export.
    if lacking and (asked := dvc_command.named_stages(stages)) is not None:
        lacking = [(key, stage) for key, stage in lacking if stage in asked]
    missing: dict[str, str] = {}  # key (a whole section where it is gone): the stage declaring
    for key, stage in lacking:
        missing.setdefault(key, stage)
    if not missing:
        return
    gone = ", ".join(f"`{key}` (the {stage} stage's)" for key, stage in missing.items())
    them = "it" if len(missing) == 1 else "them"
    conf = conf_defaults()
    in_conf = all(lookup(conf, k.split(".")) is not MISSING for k in missing)
    removed = dvc_command.removed_keys()  # None: a queued run's, which cannot be read
    cut = removed is None or bool(removed & set(missing))
    if "about" in raw and in_conf and in_experiment() and cut:
        flags = " ".join(f"-S '~{k}'" for k in missing)
        fix = f"conf/ has {them}, so the run's `{flags}` removed {them}: run again without it"
    elif "about" in raw and in_conf:  # cut by hand (`--no-hydra` runs it so), a failed exp
        fix = f"conf/ has {them}: `uv run visionpipe params` writes {them} back, then run again"
    elif "about" in raw:  # composed from conf/, which lacks them
        fix = (
            f"put {them} back in {CONF_DIR / 'config.yaml'} (`uv run visionpipe params` names"
            " each line to add, at the code's defaults), then run again"
        )
    else:
        fix = (
            f"add {them} to {DEFAULT_PARAMS}, or write the whole file from conf/ with `uv run"
            " visionpipe params`, then run again"
        )
    raise ConfigError(
        f"{DEFAULT_PARAMS} lacks {gone}, for which each stage named would be refused only as it"
        f" starts, after the stages before it have run: {fix}"
    )


def _lacking(raw: dict[str, Any], stages: dict[str, Any], conf: Any) -> list[tuple[str, str]]:
    """(key, declaring stage) for each param a stage of dvc.yaml declares that params.yaml lacks
    (the whole section where it is gone); and, in a params.yaml composed from `conf`, each key
    conf/ gives inside a declared section (`-S '~export.opset'`: DVC checks the section alone,
    and the export stage's loader refuses it as it starts)."""
    found = []
    for stage, entry in stages.items():
        for param in (entry or {}).get("params") or []:
            if not isinstance(param, str):
                continue
            parts = param.split(".")
            if (value := lookup(raw, parts)) is MISSING:
                found.append((parts[0] if parts[0] not in raw else param, stage))
            elif isinstance(value, dict) and conf is not None:
                found += [(key, stage) for key in _cut_inside(lookup(conf, parts), value, param)]
    return found


def _cut_inside(given: Any, kept: dict[str, Any], prefix: str) -> list[str]:
    """The dotted keys of `given` (conf/'s section) that `kept` (params.yaml's) lacks."""
    if not isinstance(given, dict):
        return []
    cut = []
    for key, value in given.items():
        if key not in kept:
            cut.append(f"{prefix}.{key}")
        elif isinstance(value, dict) and isinstance(kept[key], dict):
            cut += _cut_inside(value, kept[key], f"{prefix}.{key}")
    return cut


def _recipe_sets(recipe: str, key: str) -> bool:
    """Whether conf/recipe/`recipe`.yaml sets the dotted `key`."""
    try:
        sets = yaml.safe_load((CONF_DIR / "recipe" / f"{recipe}.yaml").read_text("utf-8"))
    except (OSError, UnicodeError, yaml.YAMLError):
        return False
    return lookup(sets, key.split(".")) is not MISSING


def warn_other_machine(path: Path = DEFAULT_PARAMS) -> list[str]:
    """Outside `dvc exp run`: warn of the launch settings of this machine's conf/local/machine.yaml
    that params.yaml holds other values of: params.yaml composed on another machine (a
    teammate's commit, `dvc exp apply` of their experiment) names that machine's data folder or
    GPU count. Returns the keys warned of."""
    local = CONF_DIR / "local" / "machine.yaml"
    if in_experiment() or not local.is_file():
        return []
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    given = yaml.safe_load(local.read_text(encoding="utf-8"))
    launch = given.get("launch") if isinstance(given, dict) else None
    if not isinstance(raw, dict) or not isinstance(launch, dict):
        return []
    mine: Any = {"launch": launch}
    if "${" in str(launch):  # an interpolation: Hydra resolves it, as dvc exp run would
        mine = compose([f"recipe={raw.get('recipe', 'tutorial')}"])
    keys = [f"launch.{k}" for k in launch]
    keys = [k for k in keys if not _same(_value(raw, k), _value(mine, k))]
    if keys:
        values = [f"{k} {_value(raw, k)!r}, here {_value(mine, k)!r}" for k in keys]
        logging.getLogger(__name__).warning(
            "%s's launch settings are not this machine's (%s): %s. Composed on another machine "
            "(a teammate's commit, `dvc exp apply`)? Running with %s's. To use this machine's, "
            "set them in %s (no stage declares launch.*: nothing re-runs for it), or run `uv "
            "run dvc exp run`, which composes %s anew from conf/",
            path,
            local,
            "; ".join(values),
            path,
            path,
            path,
        )
    return keys


def check_against_conf(data_stage: bool = False) -> None:
    """What a stage checks of params.yaml against conf/ before it runs, each warned of: a
    recipe line that chooses nothing, values an experiment drops from its baseline,
    another machine's launch settings, and, for the first stage (`data_stage`), a local
    data.source the recipe sets aside; for train, hand edits of params.yaml too. The download
    stage, first to run, says why another dataset comes before a download can fail."""
    try:
        raw = yaml.safe_load(DEFAULT_PARAMS.read_text(encoding="utf-8"))
    except (OSError, UnicodeError, yaml.YAMLError):
        raw = None  # the stage's own loading says what is wrong
    refuse_missing_sections(raw)  # an error first, the warnings after it would be noise
    recipe = str(raw.get("recipe", SHIPPED_RECIPE)) if isinstance(raw, dict) else None
    # Without the recipe's file, what conf/ would give cannot be told: nothing to compare with.
    here = recipe is None or (CONF_DIR / "recipe" / f"{recipe}.yaml").is_file()
    if not here:
        _warn_recipe_not_here(str(recipe))
    elif recipe and not _marked("", DEFAULT_PARAMS, "label") and warn_unchosen_recipe(recipe):
        _mark("", DEFAULT_PARAMS, "label")  # once a run; where it did not warn, later stages look
    if here and not data_stage:
        warn_drift()
    if here:
        warn_dropped_baseline()
    warn_other_machine()
    if data_stage:
        warn_unused_local_source()


def _warn_recipe_not_here(recipe: str) -> None:
    """Warn, once a run, of params.yaml's recipe that this copy of conf/ lacks: a recipe file git
    does not track is left out of a queued run's copy of the project, and of its experiment."""
    if _marked("", DEFAULT_PARAMS, "recipe-file"):
        return
    why = (
        "a queued or --temp run's copy holds only the files git tracks, so the experiment will"
        " not keep it; `git add` it, and commit it with the results"
        if in_experiment()
        else "was the file left out of a commit, renamed or deleted? Add it, or compose"
        " params.yaml anew from a recipe conf/ has with `uv run visionpipe params`"
    )
    logging.getLogger(__name__).warning(
        "params.yaml names recipe %r, and this copy of the project has no %s: %s. params.yaml is"
        " run as it is, its values not compared with the recipe's",
        recipe,
        CONF_DIR / "recipe" / f"{recipe}.yaml",
        why,
    )
    _mark("", DEFAULT_PARAMS, "recipe-file")
