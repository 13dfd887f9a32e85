"""The whole of params.yaml, every section, for `visionpipe params` (which checks a composed file)
and the tests; the train stage reads its part of it (config/training.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from visionpipe import config
from visionpipe.config.evaluate import EvaluateConfig
from visionpipe.config.export import ExportConfig
from visionpipe.config.predict import PredictConfig
from visionpipe.config.training import TrainingParams


class Params(TrainingParams):
    about: str = ""  # params.yaml's own note: where it comes from
    evaluate: EvaluateConfig = EvaluateConfig()
    export: ExportConfig = ExportConfig()
    predict: PredictConfig = PredictConfig()


def unknown_key(key: str) -> str | None:
    """For a dotted key with no place in params.yaml (`train.lrr`, `trian.lr`): which part is
    unknown and the valid keys there; None for a key params.yaml has."""
    schema: Any = Params
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
            return None  # below a plain value: not a key problem
        if part not in schema.model_fields:
            return config.unknown_key_line(".".join(parts[: i + 1]), list(schema.model_fields))
        schema = schema.model_fields[part].annotation
    return None


def parse_params(raw: Any, origin: str = "params", complete: bool = False) -> Params:
    """Validate a parsed mapping into `Params` (with `complete`, every key must be set);
    ConfigError names each problem."""
    return config.parse(Params, raw, origin, complete)


def load_params(path: Path | str = config.DEFAULT_PARAMS) -> Params:
    """Read and validate the whole of params.yaml."""
    return config.load(Params, path)
