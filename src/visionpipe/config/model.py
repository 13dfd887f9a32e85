"""The model section, made from the model table (visionpipe.models): `name`, every model's own
keys, then the keys all models take. A key set away from its default for a model that does not
take it is an error: params.yaml always holds every key, and the tutorial CNN's relu on `fast`
would otherwise be silently ignored."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, create_model, model_validator

from visionpipe.config import Section
from visionpipe.models import COMMON_KEYS, MODELS, arch_params, keys_of, own_keys


class _ModelSection(Section):
    name: str

    @model_validator(mode="after")
    def _keys_fit_the_model(self) -> _ModelSection:
        takes = keys_of(self.name)
        wrong = {
            key: field.default
            for key, field in type(self).model_fields.items()
            if key not in takes and getattr(self, key) != field.default
        }
        if not wrong:
            return self
        # All at once: a recipe made for another model (hymenoptera's relu and batch_norm, with
        # -S model.name=resnet18) sets several, which one error each would name one run at a time.
        said = "; ".join(
            f"model.{key} = {json.dumps(getattr(self, key))} does not apply to model "
            f"'{self.name}' (only to {', '.join(_models_taking(key))})"
            for key in wrong
        )
        back = " ".join(f"-S model.{key}={_hydra(default)}" for key, default in wrong.items())
        raise ValueError(
            f"{said}; the keys for '{self.name}' are {', '.join(takes)}. Set "
            f"{'it' if len(wrong) == 1 else 'them'} back to the default ({back}), in conf/ or"
            " on the command line"
        )

    @model_validator(mode="after")
    def _one_source_of_weights(self) -> _ModelSection:
        weights = getattr(self, "weights", None)
        if getattr(self, "pretrained", False) and weights is not None:
            raise ValueError(
                f"model.pretrained: true and model.weights = {json.dumps(str(weights))} both "
                "give the starting weights, and the file's would replace ImageNet's: keep one "
                "(model.pretrained: false for the file, model.weights: null for ImageNet's)"
            )
        return self

    def arch_params(self) -> dict[str, Any]:
        """The model's own switches, as `models.build_model` takes them."""
        return arch_params(self.name, self.model_dump())


def _hydra(value: Any) -> str:
    """`value` as an -S override writes it: null, true, none."""
    return "null" if value is None else json.dumps(value).strip('"')


def _models_taking(key: str) -> list[str]:
    return [name for name in MODELS if key in keys_of(name)]


def _fields() -> dict[str, Any]:
    names = tuple(MODELS)
    fields: dict[str, Any] = {"name": (Literal[names], Field(default=names[0]))}
    for key, spec in {**own_keys(), **COMMON_KEYS}.items():
        fields[key] = (spec.annotation, spec.pydantic_field())
    return fields


ModelConfig = create_model("ModelConfig", __base__=_ModelSection, **_fields())
