"""What the train stage reads of params.yaml: the sections that shape a model, and launch (where
it runs). Not evaluate, export or predict: their schemas are then no dependency of train in
dvc.yaml, and a new predict key never retrains."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import field_validator, model_validator

from visionpipe import config
from visionpipe.config import Section
from visionpipe.config.data import DataConfig, PreprocessConfig, image_size
from visionpipe.config.launch import LaunchConfig
from visionpipe.config.model import ModelConfig
from visionpipe.config.train import TrainConfig
from visionpipe.models import MODELS

# The sections that shape a trained model: the data stages' and its own. evaluate, export and
# predict change later stages only, and launch says where a run happens, never what it computes.
TRAINING_SECTIONS = ("data", "preprocess", "model", "train")
# Where the data comes from, not what it is: data/processed's hash in dvc.lock stands for the data,
# so a model trained on the same bytes from another path or mirror is the same model.pt.
DATA_LOCATION = ("source", "sha256")


class TrainingParams(Section):
    # Which recipe (conf/recipe/<name>.yaml) the values below were composed from: a label that
    # `dvc exp run -S recipe=fast` sets together with the recipe's values.
    recipe: str = "tutorial"
    data: DataConfig = DataConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    model: ModelConfig = ModelConfig()  # type: ignore[valid-type]
    train: TrainConfig = TrainConfig()
    launch: LaunchConfig = LaunchConfig()

    @field_validator("recipe")
    @classmethod
    def _interned(cls, name: str) -> str:
        # model.pt pickles these params: an interned name is one object with an equal model
        # name (`recipe: fast`, `model.name: fast`), which pickle then stores once.
        return sys.intern(name)

    @model_validator(mode="after")
    def _batch_fits_processes(self) -> TrainingParams:
        processes = self.launch.nproc * self.launch.nnodes
        if self.train.batch_size < processes:
            raise ValueError(
                f"train.batch_size {self.train.batch_size} (the global batch) must be at least "
                f"launch.nproc * launch.nnodes = {processes}"
            )
        return self

    @model_validator(mode="after")
    def _image_fits_model(self) -> TrainingParams:
        # Caught here, the user learns it at `visionpipe params` or as train starts, not from
        # torch's "Output size is too small" deep in the first forward pass.
        least = MODELS[self.model.name].min_image_size
        if self.image_size() < least:
            unset = self.preprocess.model_copy(update={"image_size": None})
            default = image_size(self.data, unset)
            null = (
                f" (or null, the dataset's default, {default})"
                if default >= least and self.preprocess.image_size is not None
                else ""
            )
            raise ValueError(
                f"preprocess.image_size {self.image_size()} is too small for model "
                f"'{self.model.name}', whose poolings need at least {least} pixels: set "
                f"preprocess.image_size to {least} or more{null}"
            )
        return self

    def image_size(self) -> int:
        return image_size(self.data, self.preprocess)

    def training_dict(self) -> dict[str, Any]:
        """The TRAINING_SECTIONS, as plain values, but the data's location (DATA_LOCATION)."""
        values = self.model_dump(mode="json", exclude={"data": set(DATA_LOCATION)})
        return {k: values[k] for k in TRAINING_SECTIONS}

    def run_dict(self) -> dict[str, Any]:
        """What a trained model means, as model.pt records it: the recipe label and the sections
        that shaped it. Not the later stages' sections, nor where the data was read from:
        changing them does not re-run train, so model.pt would keep their old values."""
        return {"recipe": self.recipe, **self.training_dict()}

    def hparams(self, image_size: int) -> dict[str, Any]:
        """`run_dict` and where the data came from: TensorBoard's HParams table of a sweep over
        data.source tells its runs apart by it. `image_size`: the size preprocess made, which
        the table shows in place of a null preprocess.image_size (the dataset's default)."""
        run = self.run_dict()
        location = {k: getattr(self.data, k) for k in DATA_LOCATION}
        preprocess = {**run["preprocess"], "image_size": image_size}
        return {**run, "data": {**run["data"], **location}, "preprocess": preprocess}


def load_training_params(path: Path | str = config.DEFAULT_PARAMS) -> TrainingParams:
    """Read and validate what the train stage reads of params.yaml."""
    return config.load(TrainingParams, path)
