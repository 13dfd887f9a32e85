"""The one loader of params.yaml: typed, frozen, strict.

params.yaml has one section per job (data, preprocess, model, train, evaluate, export, predict,
launch); each has its schema in this package (`config/<section>.py`), and a stage loads only the
sections it reads, so a stage's DVC dependencies are the schemas that decide its output. An
unknown key (a typo such as `train.lr_rate`, which `dvc exp run -S +train.lr_rate=...` adds
silently) or an invalid value fails with a message naming the key, the value and what is allowed;
`visionpipe params` checks the whole file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
)
from pydantic_core import PydanticCustomError

DEFAULT_PARAMS = Path("params.yaml")
# params.yaml's top-level keys: the recipe label, its note, and the sections.
TOP_LEVEL = (
    "recipe", "about", "data", "preprocess", "model", "train", "evaluate", "export", "predict",
    "launch",
)  # fmt: skip


# A seed (data.seed, train.seed) is a non-negative 64-bit integer: numpy's generators refuse
# negative seeds and torch's refuse 2**64 and over, deep inside preprocess or train.
Seed = Annotated[int, Field(ge=0, lt=2**63)]


# Keys an older params.yaml may hold, and their place now. This machine's launch settings left
# `train`: they never shape a model, so no stage declares them and DVC's hash leaves them out.
MOVED = {
    f"train.{name}": f"launch.{name}"
    for name in ("device", "nproc", "nnodes", "node_rank", "master_addr", "master_port")
}


def unknown_key_line(key: str, valid: Sequence[str]) -> str:
    """The error for a key params.yaml has no place for: a moved key's new name, else the keys
    valid beside it."""
    if key in MOVED:
        return (
            f"unknown key '{key}': it is '{MOVED[key]}' now (a params.yaml from an older "
            f"visionpipe); move its value there, or delete it to keep the default"
        )
    return f"unknown key '{key}'; valid keys here: {', '.join(sorted(valid))}"


class ConfigError(ValueError):
    """params.yaml is missing, unreadable or holds a bad key or value."""


class Section(BaseModel):
    # No param means anything at inf or nan (`-S train.weight_decay=inf` would train to NaN).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_switch_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        """Refuse true/false for a number: lax validation would train `train.epochs=true` for
        one epoch. (Lax it stays otherwise: PyYAML reads `lr: 1e-3` as the string "1e-3".)"""
        if isinstance(value, bool) and info.field_name is not None:
            kinds = set(get_args(cls.model_fields[info.field_name].annotation)) or {
                cls.model_fields[info.field_name].annotation
            }
            if kinds & {int, float} and bool not in kinds:
                raise PydanticCustomError(
                    "number_not_bool", "Input should be a number, not true or false"
                )
        return value


S = TypeVar("S", bound=BaseModel)


def _describe(err: dict[str, Any], raw: Any, schema: type[BaseModel]) -> str:
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] == "value_error":  # a check across keys: its message names them
        return str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        section: Any = schema
        for part in err["loc"][:-1]:
            field = section.model_fields.get(str(part))
            section = field.annotation if field is not None else None
        valid = sorted(section.model_fields) if isinstance(section, type) else []
        return unknown_key_line(key, valid)
    value = raw
    for part in err["loc"]:  # a key, or a list item's index (predict.inputs.0)
        if isinstance(value, list) and isinstance(part, int) and part < len(value):
            value = value[part]
        else:
            value = value.get(part) if isinstance(value, dict) else None
    where = f"'{key}'" if key else "params"
    return f"{where} = {value!r}: {err['msg']}"


def parse(schema: type[S], raw: Any, origin: str = "params", complete: bool = False) -> S:
    """Validate the top-level keys of a parsed params mapping that `schema` declares (every
    other key must be one of TOP_LEVEL, and with `complete` every declared key must be there);
    ConfigError names each problem."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: expected a mapping of sections, got {type(raw).__name__}")
    unknown = [k for k in raw if k not in TOP_LEVEL]
    if unknown:
        lines = [unknown_key_line(k, TOP_LEVEL) for k in unknown]
        raise ConfigError(f"{origin} is invalid:\n  - " + "\n  - ".join(lines))
    mine = {k: v for k, v in raw.items() if k in schema.model_fields}
    if complete:
        _refuse_missing(schema, mine, origin)
    try:
        return schema.model_validate(mine)
    except ValidationError as exc:
        lines = [_describe(e, mine, schema) + _set_in(e, raw) for e in exc.errors()]
        raise ConfigError(f"{origin} is invalid:\n  - " + "\n  - ".join(lines)) from None


def _set_in(err: dict[str, Any], raw: dict[str, Any]) -> str:
    """' (set in conf/...)': the conf/ file that gives the key of a bad value or an unknown key
    its value in params.yaml, the last in Hydra's order (config.yaml, local/machine.yaml, the
    recipe), since params.yaml is composed from conf/ and that file is the one to edit."""
    # compose.CONF_DIR's folder, named here: importing compose would make it (and Hydra's
    # composition) a dependency of every stage's params loading.
    conf = Path("conf")
    recipe = raw.get("recipe")
    files = [conf / "config.yaml", conf / "local" / "machine.yaml"]
    files += [conf / "recipe" / f"{recipe}.yaml"] if isinstance(recipe, str) else []
    loc = [str(part) for part in err["loc"]]
    wanted = lookup(raw, loc)
    found = ""
    for file in files if len(loc) > 1 else []:  # a section-wide check names its keys itself
        try:
            tree = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        value = lookup(tree, loc)
        if value is not MISSING and value == wanted:
            found = f" (set in {file.as_posix()})"
    return found


MISSING = object()  # what `lookup` finds where a mapping has no such key


def lookup(tree: Any, parts: Sequence[str]) -> Any:
    """The value of nested mappings at the key path `parts` (["train", "lr"]), or MISSING."""
    for part in parts:
        if not isinstance(tree, dict) or part not in tree:
            return MISSING
        tree = tree[part]
    return tree


def missing_keys(schema: type[BaseModel], raw: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys `schema` declares that `raw` lacks, in the sections `raw` has."""
    keys = []
    for name, field in schema.model_fields.items():
        sub = field.annotation
        if name not in raw:
            keys.append(f"{prefix}{name}")
        elif isinstance(raw[name], dict) and isinstance(sub, type) and issubclass(sub, BaseModel):
            keys += missing_keys(sub, raw[name], f"{prefix}{name}.")
    return keys


def in_experiment() -> bool:
    """Whether a stage runs in `dvc exp run` (plain, queued or --temp), which composes params.yaml
    from conf/ and its -S values; outside one (`dvc repro`, a stage by hand) nothing composes it."""
    return bool(os.environ.get("DVC_EXP_BASELINE_REV"))


def _missing_from_conf(key: str) -> str:
    """The line for a key params.yaml lacks that conf/ gives: in an experiment a `-S '~key'`
    removed it; outside one, params.yaml was cut by hand or composed by older code."""
    if in_experiment():
        return (
            f"'{key}' is missing (removed with `-S '~{key}'`?): set it, e.g. `-S {key}=VALUE`,"
            " or drop the `~` to keep the value conf/ gives it (cut by hand, under `--no-hydra`:"
            " `uv run visionpipe params` writes it back)"
        )
    return f"'{key}' is missing: conf/ gives it, so `uv run visionpipe params` writes it back"


def _refuse_missing(schema: type[BaseModel], raw: dict[str, Any], origin: str) -> None:
    # Without this, a key removed with `dvc exp run -S ~train.lr` would fall back to the code's
    # default without a word, not to the recipe's value that params.yaml's label promises.
    # A params.yaml composed before the code gained a key lacks it too: `visionpipe params`
    # writes it anew from conf/.
    keys = [k for k in missing_keys(schema, raw) if k not in ("recipe", "about")]
    if keys:
        defaults = conf_defaults()
        lines = [
            _missing_from_conf(k)
            if defaults is None or lookup(defaults, k.split(".")) is not MISSING
            else f"'{k}' is missing, and conf/config.yaml has no line for it (a key new in the "
            f"code, a new model's): add {default_line(schema, k)} there, then `uv run visionpipe"
            " params` (-S cannot set a key conf/ lacks)"
            for k in keys
        ]
        if in_experiment():  # outside one, each line says it already
            lines.append(
                "(for `dvc repro`: `uv run visionpipe params` writes params.yaml from conf/; a key"
                " new in the code that conf/config.yaml lacks needs its line there, at its default)"
            )
        raise ConfigError(f"{origin} is invalid:\n  - " + "\n  - ".join(lines))


def conf_defaults() -> dict[str, Any] | None:
    """conf/config.yaml, the defaults params.yaml is composed from; None where there is none
    here (a script's own params file) or it does not read."""
    try:
        found = yaml.safe_load(Path("conf/config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeError, yaml.YAMLError):
        return None
    return found if isinstance(found, dict) else None


def _default_text(schema: type[BaseModel], dotted: str) -> str:
    """The code's default of the key at `dotted`, as YAML writes it (conf/ holds the defaults:
    a test checks); DEFAULT where the code gives none."""
    *sections, name = dotted.split(".")
    for section in sections:
        sub = schema.model_fields[section].annotation
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return "DEFAULT"
        schema = sub
    field = schema.model_fields.get(name)
    if field is None or field.is_required():
        return "DEFAULT"
    default = field.get_default(call_default_factory=True)
    if isinstance(default, BaseModel):  # a whole section: its keys, in one line
        default = default.model_dump(mode="json")
    text = yaml.safe_dump(default, default_flow_style=True, sort_keys=False, width=10**6)
    return text.removesuffix("...\n").strip()  # a scalar's document-end marker


def default_line(schema: type[BaseModel], dotted: str) -> str:
    """The line a YAML file lacking the key at `dotted` needs, at the code's default, and where
    it goes: "`lr: 0.01` under `train:`"."""
    return f"`{dotted.rpartition('.')[2]}: {_default_text(schema, dotted)}` {_place(dotted)}"


def _place(dotted: str) -> str:
    """Where the line of the key at `dotted` goes in a YAML file: `under `augment:` in
    `train:``, as the file nests it (it has no `train.augment:` line)."""
    sections = dotted.split(".")[:-1]
    if not sections:
        return "at the top level"
    return "under " + " in ".join(f"`{s}:`" for s in reversed(sections))


def read(path: Path | str = DEFAULT_PARAMS) -> Any:
    """params.yaml as parsed YAML; the default one is the project's, found from a folder inside
    it too (a notebook in the project's notebooks/), before any stray one here (`dvc exp run`
    run in a subfolder leaves one there)."""
    from visionpipe.paths import project_root

    path = Path(path)
    if path == DEFAULT_PARAMS and (root := project_root()) is not None:
        path = root / DEFAULT_PARAMS
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path} not found: run from the project or a folder inside it") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None


def load(schema: type[S], path: Path | str = DEFAULT_PARAMS) -> S:
    """The sections of params.yaml that `schema` declares, validated."""
    raw = read(path)
    # A file composed from conf/ (it has conf/'s `about` note) holds every key: one missing was
    # cut out. Hand-written partial files (tests, scripts) keep the code's defaults.
    complete = isinstance(raw, dict) and "about" in raw
    return parse(schema, raw, origin=str(path), complete=complete)


def load_section(name: str, schema: type[S], path: Path | str = DEFAULT_PARAMS) -> S:
    """One section of params.yaml, validated; the other top-level keys are only checked to be
    known ones."""
    one = create_model(f"_{name}", __base__=Section, **{name: (schema, schema())})
    return getattr(load(one, path), name)
