"""The shared checkpoint interop, on a toy pair of models: "theirs" stores a Conv1D-style
``kernel`` (in, out) and a ``scale`` under a config field ``width``; "ours" has an
``nn.Linear`` ``up`` (out, in), a ``gain``, and calls the field ``hidden_size``. A second,
older format of theirs (another model type) names the matrix ``legacy_up`` in our layout.
The matrix is square, so a transpose applied where none belongs changes numbers, not shapes."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from huggingface_hub.dataclasses import strict
from safetensors import safe_open
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.core_model_loading import Transpose, WeightConverter, WeightRenaming

from scratchformers.core_attention import (
    CheckpointConverter,
    ConvertsCheckpoints,
    conversion_key,
    export_to_transformers,
)
from scratchformers.core_attention.testing import lay_out_hub_cache

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


CONVERTER = CheckpointConverter(
    transformers_model_type="toy-theirs",
    config_class=OurConfig,
    transformers_classes={"OurModel": TheirModel},
    weight_conversions=[
        WeightConverter("kernel", "up.weight", operations=[Transpose(0, 1)]),
        WeightRenaming("scale", "gain"),
    ],
    config_renames={"width": "hidden_size"},
)
LEGACY = CheckpointConverter(
    transformers_model_type="toy-legacy",
    config_class=OurConfig,
    transformers_classes={"OurModel": LegacyModel},
    weight_conversions=[WeightRenaming("legacy_up", "up.weight"), WeightRenaming("scale", "gain")],
    config_renames={"width": "hidden_size"},
)


class OurModel(ConvertsCheckpoints, PreTrainedModel):
    config_class = OurConfig
    checkpoint_converters = (CONVERTER, LEGACY)

    def __init__(self, config: OurConfig) -> None:
        super().__init__(config)
        self.up = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.gain = nn.Parameter(torch.randn(config.hidden_size))
        self.post_init()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x) * self.gain


class OurSubclass(OurModel):
    pass


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
    out = export_to_transformers(ours, tmp_path)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "toy-theirs" and config["width"] == 3
    assert "hidden_size" not in config
    theirs, info = TheirModel.from_pretrained(out, output_loading_info=True)
    assert not any(info.values())
    assert torch.equal(theirs.kernel, ours.up.weight.t())
    assert torch.equal(theirs.scale, ours.gain)


def test_export_refuses_a_conversion_that_misses_weights(tmp_path: Path) -> None:
    incomplete = dataclasses.replace(CONVERTER, weight_conversions=CONVERTER.weight_conversions[:1])
    with pytest.raises(ValueError, match=r"\['scale'\]; left over \['gain'\]"):
        incomplete.export(OurModel(OurConfig()), tmp_path)
    with pytest.raises(TypeError, match="mirrors no toy-theirs class"):
        incomplete.export(TheirModel(TheirConfig()), tmp_path)
    with pytest.raises(TypeError, match="TheirModel mirrors no transformers class"):
        export_to_transformers(TheirModel(TheirConfig()), tmp_path)


@strict
class OptionConfig(OurConfig):
    model_type = "toy-options"
    gated: bool = False


class OptionModel(OurModel):
    """Ours with an option that their class computes one way only, and each format's own
    refusal besides: the export picks the converter that takes the model."""

    config_class = OptionConfig
    checkpoint_converters = tuple(
        dataclasses.replace(converter, config_class=OptionConfig, fixed_fields={"gated": False})
        for converter in (CONVERTER, LEGACY)
    )


def test_export_refuses_what_their_class_cannot_compute(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"toy-theirs only computes gated=False \(not True\)"):
        export_to_transformers(OptionModel(OptionConfig(gated=True)), tmp_path)
    assert not any(tmp_path.iterdir())
    out = export_to_transformers(OptionModel(OptionConfig()), tmp_path)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "toy-theirs" and "gated" not in config
    converted = OptionModel.from_pretrained(out)
    assert converted.config.gated is False and converted.config.model_type == "toy-options"


def test_the_mixin_loads_each_layout_with_its_converter(tmp_path: Path) -> None:
    LegacyModel(LegacyConfig(width=3)).save_pretrained(tmp_path / "legacy")
    TheirModel(TheirConfig(width=4)).save_pretrained(tmp_path / "theirs")
    legacy = OurSubclass.from_pretrained(tmp_path / "legacy")
    theirs = OurSubclass.from_pretrained(tmp_path / "theirs")
    assert type(legacy) is type(theirs) is OurSubclass
    assert (legacy.config.hidden_size, theirs.config.hidden_size) == (3, 4)
    with pytest.raises(OSError):
        OurModel.from_pretrained(tmp_path / "nowhere")


def test_configs_convert_with_overrides_and_without_bookkeeping() -> None:
    config = CONVERTER.config_from_transformers(
        {"width": 3, "model_type": "toy-theirs", "architectures": ["TheirModel"]},
        output_attentions=True,
    )
    assert type(config) is OurConfig and config.hidden_size == 3 and config.output_attentions
    composite = CONVERTER.fields_from_transformers(
        {"width": 3, "text_config": {"model_type": "toy-text", "width": 2}}
    )
    assert composite == {"hidden_size": 3, "text_config": {"width": 2}}
    assert CONVERTER.fields_to_transformers({"hidden_size": 3, "model_type": "x"}) == {"width": 3}
    narrow = dataclasses.replace(CONVERTER, only_our_fields=True)
    assert "decoder_width" not in narrow.fields_from_transformers({"width": 3, "decoder_width": 2})


def test_state_dicts_convert_both_ways() -> None:
    theirs = {"kernel": torch.randn(WIDTH, WIDTH), "scale": torch.randn(WIDTH)}
    ours = CONVERTER.state_from_transformers(theirs)
    assert ours.keys() == {"up.weight", "gain"}
    assert torch.equal(ours["up.weight"], theirs["kernel"].t())
    back = CONVERTER.state_to_transformers(ours)
    assert back.keys() == theirs.keys()
    assert all(torch.equal(back[name], tensor) for name, tensor in theirs.items())


def test_conversions_are_registered_under_a_key_of_their_own() -> None:
    assert conversion_key(OurModel, CONVERTER) == "toy-ours<-toy-theirs"


# --- errors that name their cause (ChecksCheckpoints, which ConvertsCheckpoints builds on) --


def set_config_field(folder: Path, name: str, value: object = None) -> Path:
    """Change (or, with ``None``, remove) one field of ``folder``'s config.json."""
    file = folder / "config.json"
    config = json.loads(file.read_text())
    if value is None:
        del config[name]
    else:
        config[name] = value
    file.write_text(json.dumps(config))
    return file


def test_a_weight_of_another_shape_names_the_file_tensor_shapes_and_field(tmp_path: Path) -> None:
    OurModel(OurConfig(hidden_size=3)).save_pretrained(tmp_path)
    set_config_field(tmp_path, "hidden_size", 4)
    with pytest.raises(ValueError) as raised:
        OurModel.from_pretrained(tmp_path)
    message = str(raised.value)
    assert message.startswith(f"the checkpoint {tmp_path} does not fit this OurModel: 2 weights")
    assert (
        f"gain has shape (3,) in {tmp_path / 'model.safetensors'}, the model's is (4,) "
        "(dimension 0 is 4 from hidden_size=4)"
    ) in message
    assert "up.weight has shape (3, 3)" in message and "the model's is (4, 4)" in message
    assert "class default" not in message and "ignore_mismatched_sizes=True" in message


def test_ignore_mismatched_sizes_and_output_loading_info_work_as_in_transformers(
    tmp_path: Path,
) -> None:
    OurModel(OurConfig(hidden_size=3)).save_pretrained(tmp_path)
    set_config_field(tmp_path, "hidden_size", 4)
    model, info = OurModel.from_pretrained(
        tmp_path, ignore_mismatched_sizes=True, output_loading_info=True
    )
    assert model.up.weight.shape == (4, 4)
    assert {key for key, _, _ in info["mismatched_keys"]} == {"up.weight", "gain"}
    assert isinstance(OurModel.from_pretrained(tmp_path, ignore_mismatched_sizes=True), OurModel)


def test_a_size_field_missing_from_their_config_names_the_default(tmp_path: Path) -> None:
    TheirModel(TheirConfig(width=3)).save_pretrained(tmp_path)
    config_file = set_config_field(tmp_path, "width")  # renamed to our hidden_size on load
    with pytest.raises(ValueError) as raised:
        OurModel.from_pretrained(tmp_path)
    message = str(raised.value)
    assert f"from hidden_size={WIDTH} (not in {config_file}: the class default)" in message
    assert "up.weight has shape (3, 3)" in message and f"({WIDTH}, {WIDTH})" in message


def test_a_config_given_as_an_object_is_not_blamed_on_config_json(tmp_path: Path) -> None:
    OurModel(OurConfig(hidden_size=3)).save_pretrained(tmp_path)
    set_config_field(tmp_path, "hidden_size")
    with pytest.raises(ValueError, match=r"from hidden_size=4\)") as raised:
        OurModel.from_pretrained(tmp_path, config=OurConfig(hidden_size=4))
    assert "config.json" not in str(raised.value)


def test_a_damaged_weights_file_is_named_before_loading(tmp_path: Path) -> None:
    for name, model in {"ours": OurModel(OurConfig()), "theirs": TheirModel(TheirConfig())}.items():
        weights = tmp_path / name / "model.safetensors"
        model.save_pretrained(weights.parent)
        weights.write_bytes(weights.read_bytes()[:-4])
        with pytest.raises(OSError, match=rf"^{re.escape(str(weights))} is truncated"):
            OurModel.from_pretrained(weights.parent)


def test_a_damaged_file_in_the_hub_cache_names_the_checkpoint(tmp_path: Path) -> None:
    OurModel(OurConfig()).save_pretrained(tmp_path / "saved")
    weights = tmp_path / "saved" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4])
    commit = "0" * 40
    lay_out_hub_cache(tmp_path / "cache", "someone/toy", {commit: tmp_path / "saved"}, commit)
    with pytest.raises(
        OSError, match=r"^the checkpoint someone/toy has a weights file that is not"
    ):
        OurModel.from_pretrained("someone/toy", cache_dir=tmp_path / "cache")
