"""from_pretrained arguments on transformers' GPT-2 checkpoints behave as they do for
transformers' own GPT-2 classes, which every test here loads the same way as a reference:
dtype, subfolder, output_loading_info, config, config-field keywords, attn_implementation,
device_map, loader flags, and hub ids with revision, cache_dir and local_files_only (offline,
from a Hugging Face cache laid out on disk, through the real hub code)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers

from scratchformers.core_attention.testing import lay_out_hub_cache
from scratchformers.gpt2 import GPT2Config, GPT2LMHeadModel, GPT2Model

# Odd sizes, and a square MLP (n_inner == n_embd): a missed transpose fails on numbers, not shapes.
ODD = {"n_embd": 40, "n_head": 5, "n_layer": 3, "n_inner": 40}
IDS = torch.tensor([[7, 8, 9, 10, 11], [3, 4, 5, 6, 2]])
THEIRS = {GPT2LMHeadModel: transformers.GPT2LMHeadModel, GPT2Model: transformers.GPT2Model}


def outputs(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        result = model(IDS)
    return result.logits if hasattr(result, "logits") else result.last_hidden_state


def load_both(our_class: type, directory: Path | str, **kwargs: object) -> tuple:
    """Our class and the transformers class it mirrors, loaded with the same arguments."""
    return our_class.from_pretrained(directory, **kwargs), THEIRS[our_class].from_pretrained(
        directory, **kwargs
    )


@pytest.fixture
def lm_dir(make_theirs: Callable[..., torch.nn.Module], tmp_path: Path) -> Path:
    """A directory written by transformers' GPT2LMHeadModel."""
    make_theirs(**ODD).save_pretrained(tmp_path / "lm")
    return tmp_path / "lm"


@pytest.fixture(params=[True, False], ids=["GPT2LMHeadModel-files", "GPT2Model-files"])
def transformers_dir(
    request: pytest.FixtureRequest, make_theirs: Callable[..., torch.nn.Module], tmp_path: Path
) -> Path:
    """A directory written by transformers' GPT2LMHeadModel or by its GPT2Model."""
    make_theirs("lm" if request.param else "base", **ODD).save_pretrained(tmp_path / "theirs")
    return tmp_path / "theirs"


@pytest.fixture(params=[GPT2LMHeadModel, GPT2Model], ids=["into-LM", "into-body"])
def our_class(request: pytest.FixtureRequest) -> type:
    return request.param


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"dtype": "auto"},
        {"dtype": torch.bfloat16},
        {"dtype": "float64"},
        {"torch_dtype": torch.float32},
    ],
    ids=["default", "auto", "bfloat16", "float64-by-name", "torch_dtype"],
)
def test_dtype_sets_weights_and_config_alike(
    make_theirs: Callable, tmp_path: Path, our_class: type, kwargs: dict
) -> None:
    """On a float16 checkpoint: the default and "auto" keep float16, a dtype is applied, and
    config.dtype always names the dtype the weights have, as in transformers."""
    make_theirs(**ODD).half().save_pretrained(tmp_path)
    ours, theirs = load_both(our_class, tmp_path, **kwargs)
    dtypes = {p.dtype for p in ours.parameters()}
    assert dtypes == {p.dtype for p in theirs.parameters()}
    assert dtypes == {ours.config.dtype} and ours.config.dtype == theirs.config.dtype
    if kwargs in ({}, {"dtype": "auto"}):
        assert ours.config.dtype == torch.float16


def test_subfolder(
    make_theirs: Callable, tmp_path: Path, our_class: type, assert_matches: Callable
) -> None:
    make_theirs(**ODD).save_pretrained(tmp_path / "repo" / "weights")
    ours, theirs = load_both(our_class, tmp_path / "repo", subfolder="weights")
    assert_matches(outputs(ours), outputs(theirs))
    with pytest.raises(OSError):
        our_class.from_pretrained(tmp_path / "repo")


@pytest.mark.parametrize("tie", [True, False])
def test_output_loading_info_is_transformers(
    make_theirs: Callable, tmp_path: Path, our_class: type, tie: bool
) -> None:
    """The same (model, info) pair, with the same info, as transformers returns: an untied
    head is an unexpected key for a GPT2Model in both."""
    make_theirs(tie_word_embeddings=tie, **ODD).save_pretrained(tmp_path)
    (ours, info), (_, their_info) = load_both(our_class, tmp_path, output_loading_info=True)
    assert type(ours) is our_class
    assert info == their_info
    assert {k: type(v) for k, v in info.items()} == {k: type(v) for k, v in their_info.items()}
    expected = {"lm_head.weight"} if our_class is GPT2Model and not tie else set()
    assert info["unexpected_keys"] == expected and not info["missing_keys"]


def test_a_config_object(lm_dir: Path, our_class: type, assert_matches: Callable) -> None:
    """Our config, as given (and left untouched), instead of the directory's."""
    fields = transformers.GPT2Config.from_pretrained(lm_dir).to_dict()
    config = GPT2Config(
        **{k: v for k, v in fields.items() if k not in ("model_type", "architectures")}
    )
    config.output_hidden_states = True
    config.layer_norm_epsilon = 0.25
    ours = our_class.from_pretrained(lm_dir, config=config)
    theirs = THEIRS[our_class].from_pretrained(
        lm_dir, output_hidden_states=True, layer_norm_epsilon=0.25
    )
    assert ours.config is not config and config.model_type == "scratchformers-gpt2"
    assert type(ours.config) is GPT2Config and ours.config.layer_norm_epsilon == 0.25
    assert_matches(outputs(ours), outputs(theirs))
    with torch.no_grad():
        assert len(ours(IDS).hidden_states) == 4
    # As in transformers, keywords beside a config object go to the model, which takes none.
    with pytest.raises(TypeError, match="output_attentions"):
        our_class.from_pretrained(lm_dir, config=config, output_attentions=True)
    with pytest.raises(TypeError, match="output_attentions"):
        THEIRS[our_class].from_pretrained(lm_dir, config=config, output_attentions=True)


def test_a_config_path(
    make_theirs: Callable, lm_dir: Path, tmp_path: Path, assert_matches: Callable
) -> None:
    """A config read from elsewhere (here: a wider epsilon), weights from the directory."""
    make_theirs(layer_norm_epsilon=0.25, **ODD).config.save_pretrained(tmp_path / "config")
    ours, theirs = load_both(GPT2LMHeadModel, lm_dir, config=str(tmp_path / "config"))
    assert type(ours.config) is GPT2Config and ours.config.layer_norm_epsilon == 0.25
    assert_matches(outputs(ours), outputs(theirs))


def test_config_fields_as_keywords(lm_dir: Path, our_class: type, assert_matches: Callable) -> None:
    """Keywords naming config fields set them, numerics included."""
    ours, theirs = load_both(our_class, lm_dir, output_hidden_states=True, layer_norm_epsilon=0.3)
    assert ours.config.output_hidden_states is True and ours.config.layer_norm_epsilon == 0.3
    assert type(ours.config) is GPT2Config and ours.config.model_type == "scratchformers-gpt2"
    assert_matches(outputs(ours), outputs(theirs))
    with torch.no_grad():
        assert len(ours(IDS).hidden_states) == ours.config.n_layer + 1


def test_an_unknown_keyword_fails_as_in_transformers(lm_dir: Path, our_class: type) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'no_such_option'"):
        our_class.from_pretrained(lm_dir, no_such_option=1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'no_such_option'"):
        THEIRS[our_class].from_pretrained(lm_dir, no_such_option=1)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_attn_implementation(
    transformers_dir: Path, our_class: type, assert_matches: Callable, attn_implementation: str
) -> None:
    ours, theirs = load_both(our_class, transformers_dir, attn_implementation=attn_implementation)
    assert ours.config._attn_implementation == attn_implementation
    assert_matches(outputs(ours), outputs(theirs))


def test_device_map_and_loader_flags(transformers_dir: Path, our_class: type) -> None:
    flags = {"device_map": "cpu", "low_cpu_mem_usage": True, "local_files_only": True}
    ours, theirs = load_both(our_class, transformers_dir, **flags)
    assert {p.device.type for p in ours.parameters()} == {"cpu"}
    assert getattr(ours, "hf_device_map", None) == getattr(theirs, "hf_device_map", None)
    assert not ours.training
    assert torch.equal(outputs(ours), outputs(our_class.from_pretrained(transformers_dir)))


def test_pickles_cannot_be_asked_for(lm_dir: Path) -> None:
    with pytest.raises(ValueError, match="safetensors only"):
        GPT2LMHeadModel.from_pretrained(lm_dir, use_safetensors=False)


def test_hub_id_with_revision_cache_dir_and_local_files_only(
    make_theirs: Callable, tmp_path: Path, our_class: type, assert_matches: Callable
) -> None:
    """A hub id is resolved by transformers' and huggingface_hub's own code (offline here, so
    from the cache): "main" and an explicit commit give different weights, each converted."""
    first, second = "a" * 40, "b" * 40
    for seed, commit in enumerate((first, second)):
        make_theirs(seed=seed, **ODD).save_pretrained(tmp_path / commit)
    cache = tmp_path / "cache"
    lay_out_hub_cache(cache, "someone/tiny-gpt2", {c: tmp_path / c for c in (first, second)}, first)
    loaded = {}
    for revision in ("main", second):
        for local_files_only in (False, True):
            ours, theirs = load_both(
                our_class,
                "someone/tiny-gpt2",
                cache_dir=cache,
                revision=revision,
                local_files_only=local_files_only,
            )
            assert_matches(outputs(ours), outputs(theirs))
            loaded[revision] = outputs(ours)
    assert not torch.allclose(loaded["main"], loaded[second])


def test_hub_errors_are_transformers_errors(tmp_path: Path) -> None:
    """An id that is in no cache (offline), and a local path that does not exist, fail as they
    do for transformers' class."""
    for name in ("someone/not-a-real-repo", str(tmp_path / "nowhere")):
        with pytest.raises(OSError) as ours:
            GPT2LMHeadModel.from_pretrained(name, cache_dir=tmp_path)
        with pytest.raises(OSError) as theirs:
            transformers.GPT2LMHeadModel.from_pretrained(name, cache_dir=tmp_path)
        assert type(ours.value) is type(theirs.value)
        assert str(ours.value) == str(theirs.value)
