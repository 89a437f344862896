"""The shared checkpoint interop, on a toy pair of models: "theirs" stores a Conv1D-style
``kernel`` (in, out) and a ``scale`` under a config field ``width``; "ours" has an
``nn.Linear`` ``up`` (out, in), a ``gain``, and calls the field ``hidden_size``. A second,
older format of theirs (another model type) names the matrix ``legacy_up`` in our layout.
The matrix is square, so a transpose applied where none belongs changes numbers, not shapes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from huggingface_hub.dataclasses import strict
from safetensors import safe_open
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.core_model_loading import Transpose, WeightConverter, WeightRenaming

from scratchformers.core_attention import (
    CheckpointConverter,
    conversion_key,
    convert_state_dict,
    export_checkpoint,
    from_pretrained_or_convert,
)

WIDTH = 5


@strict
class TheirConfig(PreTrainedConfig):
    model_type = "toy-theirs"
    width: int = WIDTH


class TheirModel(PreTrainedModel):
    config_class = TheirConfig

    def __init__(self, config: TheirConfig) -> None:
        super().__init__(config)
        self.kernel = nn.Parameter(torch.randn(config.width, config.width))
        self.scale = nn.Parameter(torch.randn(config.width))
        self.post_init()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.kernel) * self.scale


@strict
class LegacyConfig(TheirConfig):
    model_type = "toy-legacy"


class LegacyModel(PreTrainedModel):
    config_class = LegacyConfig

    def __init__(self, config: LegacyConfig) -> None:
        super().__init__(config)
        self.legacy_up = nn.Parameter(torch.randn(config.width, config.width))
        self.scale = nn.Parameter(torch.randn(config.width))
        self.post_init()


@strict
class OurConfig(PreTrainedConfig):
    model_type = "toy-ours"
    hidden_size: int = WIDTH


class OurModel(PreTrainedModel):
    config_class = OurConfig

    def __init__(self, config: OurConfig) -> None:
        super().__init__(config)
        self.up = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.gain = nn.Parameter(torch.randn(config.hidden_size))
        self.post_init()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x) * self.gain

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> Any:
        return from_pretrained_or_convert(
            cls, OurModel, pretrained_model_name_or_path, CONVERTERS, *args, **kwargs
        )


class OurSubclass(OurModel):
    pass


CONVERTER = CheckpointConverter(
    transformers_model_type="toy-theirs",
    transformers_classes={OurModel: TheirModel},
    weight_conversions=[
        WeightConverter("kernel", "up.weight", operations=[Transpose(0, 1)]),
        WeightRenaming("scale", "gain"),
    ],
    config_renames={"width": "hidden_size"},
)
LEGACY = CheckpointConverter(
    transformers_model_type="toy-legacy",
    transformers_classes={OurModel: LegacyModel},
    weight_conversions=[WeightRenaming("legacy_up", "up.weight"), WeightRenaming("scale", "gain")],
    config_renames={"width": "hidden_size"},
)
CONVERTERS = (CONVERTER, LEGACY)


def saved_keys(directory: Path) -> set[str]:
    with safe_open(directory / "model.safetensors", framework="pt") as handle:
        return set(handle.keys())


def test_their_checkpoint_is_converted_with_config_fields_renamed(tmp_path: Path) -> None:
    theirs = TheirModel(TheirConfig(width=3))
    theirs.save_pretrained(tmp_path)
    ours, info = OurModel.from_pretrained(tmp_path, output_loading_info=True)
    assert type(ours.config) is OurConfig and ours.config.hidden_size == 3
    assert ours.config.model_type == "toy-ours" and not any(info.values())
    assert torch.equal(ours.up.weight, theirs.kernel.t())
    assert torch.equal(ours.gain, theirs.scale)
    x = torch.randn(2, 3)
    torch.testing.assert_close(ours(x), theirs(x))


def test_the_checkpoints_model_type_picks_the_converter(tmp_path: Path) -> None:
    legacy = LegacyModel(LegacyConfig())
    legacy.save_pretrained(tmp_path)
    ours = OurModel.from_pretrained(tmp_path)
    assert torch.equal(ours.up.weight, legacy.legacy_up)


def test_our_checkpoints_load_and_save_unconverted(tmp_path: Path) -> None:
    TheirModel(TheirConfig()).save_pretrained(tmp_path / "theirs")
    converted = OurModel.from_pretrained(tmp_path / "theirs")
    fresh = OurModel(OurConfig())
    for name, model in {"converted": converted, "fresh": fresh}.items():
        model.save_pretrained(tmp_path / name)
        assert saved_keys(tmp_path / name) == {"up.weight", "gain"}
        reloaded = OurModel.from_pretrained(tmp_path / name)
        assert torch.equal(reloaded.up.weight, model.up.weight), name


def test_keywords_naming_config_fields_set_them_and_others_fail(tmp_path: Path) -> None:
    TheirModel(TheirConfig()).save_pretrained(tmp_path)
    ours = OurModel.from_pretrained(tmp_path, output_attentions=True, dtype=torch.float64)
    assert ours.config.output_attentions is True
    assert ours.config.dtype == ours.up.weight.dtype == torch.float64
    with pytest.raises(TypeError, match="unexpected keyword argument 'hidden'"):
        OurModel.from_pretrained(tmp_path, hidden=3)


def test_export_writes_their_layout_and_config(tmp_path: Path) -> None:
    ours = OurSubclass(OurConfig(hidden_size=3))
    out = export_checkpoint(ours, tmp_path, CONVERTER)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "toy-theirs" and config["width"] == 3
    assert "hidden_size" not in config
    theirs, info = TheirModel.from_pretrained(out, output_loading_info=True)
    assert not any(info.values())
    assert torch.equal(theirs.kernel, ours.up.weight.t())
    assert torch.equal(theirs.scale, ours.gain)


def test_export_refuses_a_conversion_that_misses_weights(tmp_path: Path) -> None:
    incomplete = CheckpointConverter(
        transformers_model_type="toy-theirs",
        transformers_classes={OurModel: TheirModel},
        weight_conversions=[WeightConverter("kernel", "up.weight", operations=[Transpose(0, 1)])],
        config_renames={"width": "hidden_size"},
    )
    with pytest.raises(ValueError, match=r"\['scale'\]; left over \['gain'\]"):
        export_checkpoint(OurModel(OurConfig()), tmp_path, incomplete)
    with pytest.raises(TypeError, match="mirrors no toy-theirs class"):
        export_checkpoint(TheirModel(TheirConfig()), tmp_path, incomplete)


def test_state_dicts_convert_both_ways() -> None:
    theirs = {"kernel": torch.randn(WIDTH, WIDTH), "scale": torch.randn(WIDTH)}
    ours = convert_state_dict(theirs, CONVERTER.weight_conversions)
    assert ours.keys() == {"up.weight", "gain"}
    assert torch.equal(ours["up.weight"], theirs["kernel"].t())
    back = convert_state_dict(ours, CONVERTER.weight_conversions, reverse=True)
    assert back.keys() == theirs.keys()
    assert all(torch.equal(back[name], tensor) for name, tensor in theirs.items())


def test_conversions_are_registered_under_a_key_of_their_own() -> None:
    assert conversion_key(OurModel, CONVERTER) == "toy-ours<-toy-theirs"
    assert CONVERTER.config_to_transformers({"hidden_size": 3, "model_type": "x"}) == {"width": 3}
