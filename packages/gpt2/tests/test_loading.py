"""Loading transformers' GPT-2 checkpoints: every config variant gives transformers' logits and
loss; GPT2Model directories, sharded safetensors and hub ids load; pickled weights are refused;
our own directories load through the Auto classes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers
from hypothesis import given
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from scratchformers.gpt2 import GPT2Config, GPT2LMHeadModel, GPT2Model

VARIANTS = {
    "base": {},
    "odd-width-5-heads-n_inner": {"n_embd": 40, "n_head": 5, "n_inner": 72, "n_layer": 3},
    "relu": {"activation_function": "relu"},
    "gelu": {"activation_function": "gelu"},
    "unscaled-attention": {"scale_attn_weights": False},
    "inverse-layer-idx": {"scale_attn_by_inverse_layer_idx": True, "n_layer": 3},
    "reorder-and-upcast": {"reorder_and_upcast_attn": True},
    "layer-norm-epsilon": {"layer_norm_epsilon": 0.3},
    "untied": {"tie_word_embeddings": False},
}
# transformers only takes its reorder-and-upcast path in eager attention: compare against that.
EAGER_VARIANTS = {"reorder-and-upcast"}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_and_loss_equal_transformers(
    make_pair: Callable,
    padded_batch: Callable,
    their_positions: Callable,
    assert_matches: Callable,
    variant: str,
) -> None:
    attn = "eager" if variant in EAGER_VARIANTS else None
    pair = make_pair(attn_implementation=attn, **VARIANTS[variant])
    for key, value in VARIANTS[variant].items():
        assert getattr(pair.ours.config, key) == value, key
    input_ids, mask, _ = padded_batch((11, 6, 3, 11))
    # Ignore padding, and each row's first real token too: it would be predicted from the
    # padding position before it, whose output is not defined (nothing may be attended to).
    first_real = mask.argmax(-1)
    labels = input_ids.masked_fill(mask == 0, -100)
    labels[torch.arange(len(labels)), first_real] = -100
    labels[0, 4:7] = -100
    with torch.no_grad():
        got = pair.ours(input_ids, attention_mask=mask, labels=labels)
        expected = pair.theirs(
            input_ids, attention_mask=mask, position_ids=their_positions(mask), labels=labels
        )
    assert_matches(got.logits, expected.logits, mask)
    assert abs(float(got.loss) - float(expected.loss)) <= 1e-5


def test_ignored_labels_are_ignored(make_pair: Callable, padded_batch: Callable) -> None:
    """Only the labelled positions count: a loss over a subset differs, and equals the mean
    cross entropy of those shifted positions alone."""
    pair = make_pair()
    input_ids, mask, _ = padded_batch((9, 9))
    labels = input_ids.clone()
    labels[:, :5] = -100
    with torch.no_grad():
        output = pair.ours(input_ids, attention_mask=mask, labels=labels)
    logits = output.logits[:, :-1].reshape(-1, output.logits.shape[-1])
    expected = torch.nn.functional.cross_entropy(
        logits, labels[:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(output.loss, expected, atol=1e-6, rtol=1e-6)
    with torch.no_grad():
        every = pair.ours(input_ids, attention_mask=mask, labels=input_ids).loss
    assert abs(float(every) - float(output.loss)) > 1e-3


@pytest.mark.parametrize("length", [1, 7, 13])
def test_unpadded_odd_lengths(make_pair: Callable, assert_matches: Callable, length: int) -> None:
    pair = make_pair(n_embd=40, n_head=5)
    input_ids = torch.randint(2, 101, (2, length))
    with torch.no_grad():
        assert_matches(pair.ours(input_ids).logits, pair.theirs(input_ids).logits)


@given(
    lengths=st.lists(st.integers(1, 13), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_any_left_padded_batch_matches_transformers(
    make_pair: Callable,
    padded_batch: Callable,
    their_positions: Callable,
    assert_matches: Callable,
    lengths: list[int],
    seed: int,
) -> None:
    pair = make_pair(seed=seed % 3, n_embd=40, n_head=5, n_layer=3)
    input_ids, mask, _ = padded_batch(tuple(lengths), seed=seed)
    with torch.no_grad():
        got = pair.ours(input_ids, attention_mask=mask).logits
        expected = pair.theirs(
            input_ids, attention_mask=mask, position_ids=their_positions(mask)
        ).logits
    assert_matches(got, expected, mask)


def test_base_model_directory_loads_into_our_gpt2model(
    make_pair: Callable, padded_batch: Callable, their_positions: Callable, assert_matches: Callable
) -> None:
    pair = make_pair("base", n_layer=3)
    assert isinstance(pair.theirs, transformers.GPT2Model)
    input_ids, mask, _ = padded_batch((13, 8, 1))
    with torch.no_grad():
        got = pair.ours(input_ids, attention_mask=mask).last_hidden_state
        expected = pair.theirs(
            input_ids, attention_mask=mask, position_ids=their_positions(mask)
        ).last_hidden_state
    assert_matches(got, expected, mask, what="hidden state")


def test_lm_directory_loads_into_our_gpt2model(
    make_pair: Callable, padded_batch: Callable, assert_matches: Callable
) -> None:
    """Our bare GPT2Model takes the body of a transformers GPT2LMHeadModel checkpoint."""
    pair = make_pair()
    body = GPT2Model.from_pretrained(pair.directory)
    assert type(body) is GPT2Model
    input_ids, mask, _ = padded_batch()
    with torch.no_grad():
        got = body(input_ids, attention_mask=mask).last_hidden_state
        expected = pair.ours.transformer(input_ids, attention_mask=mask).last_hidden_state
    assert torch.equal(got[mask.bool()], expected[mask.bool()])


def test_sharded_safetensors_load(
    make_theirs: Callable,
    tmp_path: Path,
    padded_batch: Callable,
    their_positions: Callable,
    assert_matches: Callable,
) -> None:
    theirs = make_theirs(n_layer=3)
    theirs.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert not (tmp_path / "model.safetensors").exists()
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 2
    model = GPT2LMHeadModel.from_pretrained(tmp_path)
    input_ids, mask, _ = padded_batch()
    with torch.no_grad():
        got = model(input_ids, attention_mask=mask).logits
        expected = theirs(input_ids, attention_mask=mask, position_ids=their_positions(mask)).logits
    assert_matches(got, expected, mask)


def test_pickled_weights_are_refused_never_unpickled(
    make_theirs: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    theirs = make_theirs()
    theirs.config.save_pretrained(tmp_path)
    torch.save(theirs.state_dict(), tmp_path / "pytorch_model.bin")

    def no_unpickling(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(OSError, match=r"model\.safetensors"):
        GPT2LMHeadModel.from_pretrained(tmp_path)


def test_a_directory_without_weights_is_refused(make_theirs: Callable, tmp_path: Path) -> None:
    make_theirs().config.save_pretrained(tmp_path)
    with pytest.raises(OSError, match=r"model\.safetensors"):
        GPT2LMHeadModel.from_pretrained(tmp_path)


def test_a_checkpoint_missing_weights_is_refused(make_theirs: Callable, tmp_path: Path) -> None:
    """A 3-layer config over 2 layers of weights fails, naming the missing weights (where
    transformers would only warn and leave them random)."""
    theirs = make_theirs()
    theirs.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    config.n_layer = 3
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"transformer\.h\.2\.attn\.q_proj\.weight"):
        GPT2LMHeadModel.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"16 weights of GPT2Model: \['h\.2\.attn\.k_proj\.bias'"):
        GPT2Model.from_pretrained(tmp_path)


def test_old_causal_mask_buffers_are_dropped(
    make_theirs: Callable, tmp_path: Path, assert_matches: Callable
) -> None:
    """Old checkpoints hold attn.bias and attn.masked_bias buffers: not weights, not loaded,
    not reported as unexpected (attn.bias is not by transformers' class either)."""
    theirs = make_theirs(n_layer=2)
    state = {name: tensor.contiguous() for name, tensor in theirs.state_dict().items()}
    state.pop("lm_head.weight")  # tied: stored once, as save_pretrained does
    for i in range(2):
        state[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 40, 40))
    state["transformer.h.0.attn.masked_bias"] = torch.tensor(-1e4)
    theirs.config.save_pretrained(tmp_path)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model, info = GPT2LMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"]
    input_ids = torch.randint(2, 101, (2, 6))
    with torch.no_grad():
        assert_matches(model(input_ids).logits, theirs(input_ids).logits)


def test_our_directories_load_through_the_auto_classes(
    make_config: Callable, tmp_path: Path, padded_batch: Callable
) -> None:
    model = GPT2LMHeadModel(make_config(n_layer=3)).eval()
    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "scratchformers-gpt2"
    assert isinstance(AutoConfig.from_pretrained(tmp_path), GPT2Config)
    causal = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    body = AutoModel.from_pretrained(tmp_path).eval()
    assert type(causal) is GPT2LMHeadModel
    assert type(body) is GPT2Model
    input_ids, mask, _ = padded_batch()
    real = mask.bool()
    with torch.no_grad():
        expected = model(input_ids, attention_mask=mask, output_hidden_states=True)
        logits = causal(input_ids, attention_mask=mask).logits
        hidden = body(input_ids, attention_mask=mask).last_hidden_state
    assert torch.equal(logits[real], expected.logits[real])
    assert torch.equal(hidden[real], expected.hidden_states[-1][real])


def our_layout(theirs: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A transformers GPT-2's weights in our names and nn.Linear layouts, worked out by hand:
    q/k/v are the column blocks of c_attn, every projection is transposed, and a tied head is
    stored once."""
    state = {}
    for name, tensor in theirs.state_dict().items():
        is_weight = name.endswith(".weight")
        if ".attn.c_attn." in name:
            for projection, part in zip("qkv", tensor.chunk(3, dim=-1), strict=True):
                state[name.replace("c_attn", f"{projection}_proj")] = (
                    part.t() if is_weight else part
                )
        elif ".attn.c_proj." in name:
            state[name.replace("c_proj", "o_proj")] = tensor.t() if is_weight else tensor
        elif ".mlp." in name and is_weight:
            state[name] = tensor.t()
        elif name != "lm_head.weight" or not theirs.config.tie_word_embeddings:
            state[name] = tensor
    return {name: tensor.contiguous() for name, tensor in state.items()}


@pytest.fixture
def old_layout_dir(make_theirs: Callable, tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    """One of our directories as our save_pretrained wrote them before loads went through
    transformers' loader (config.json of model type scratchformers-gpt2, q/k/v/o and the MLP
    as nn.Linear), with a square MLP: loading it in transformers' Conv1D layout by mistake
    would transpose matrices without a shape error. Returns it and the transformers model
    with the same weights."""
    theirs = make_theirs(n_embd=40, n_head=5, n_layer=3, n_inner=40)
    fields = theirs.config.to_dict()
    fields.pop("model_type")
    config = GPT2Config(**fields)
    config.architectures = ["GPT2LMHeadModel"]
    config.save_pretrained(tmp_path)
    save_file(our_layout(theirs), tmp_path / "model.safetensors", metadata={"format": "pt"})
    return tmp_path, theirs


def test_our_old_layout_directories_load_unconverted(
    old_layout_dir: tuple[Path, torch.nn.Module],
    make_pair: Callable,
    padded_batch: Callable,
    their_positions: Callable,
    assert_matches: Callable,
) -> None:
    directory, theirs = old_layout_dir
    make_pair(n_inner=40, n_embd=40, n_head=5)  # a converted load first: nothing carries over
    model, info = GPT2LMHeadModel.from_pretrained(directory, output_loading_info=True)
    assert not any(info.values())
    causal = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float64)
    assert type(causal) is GPT2LMHeadModel and causal.config.dtype == torch.float64
    input_ids, mask, _ = padded_batch()
    with torch.no_grad():
        expected = theirs(input_ids, attention_mask=mask, position_ids=their_positions(mask))
        assert_matches(model(input_ids, attention_mask=mask).logits, expected.logits, mask)
        assert_matches(causal(input_ids, attention_mask=mask).logits, expected.logits, mask)


@pytest.mark.parametrize("source", ["transformers", "fresh"])
def test_our_saves_stay_in_our_layout(
    old_layout_dir: tuple[Path, torch.nn.Module],
    make_pair: Callable,
    make_config: Callable,
    tmp_path_factory: pytest.TempPathFactory,
    source: str,
) -> None:
    """A model converted from transformers' layout, or made from scratch, saves in our layout
    (not reverted to Conv1D on save), which reloads bit-exact."""
    _, theirs = old_layout_dir
    if source == "transformers":
        model = make_pair(n_embd=40, n_head=5, n_layer=3, n_inner=40).ours
        expected = {name: tuple(t.shape) for name, t in our_layout(theirs).items()}
    else:
        model = GPT2LMHeadModel(make_config(n_embd=40, n_head=5, n_layer=3, n_inner=40))
    out = tmp_path_factory.mktemp("ours")
    model.save_pretrained(out)
    with safe_open(out / "model.safetensors", framework="pt") as handle:
        names = handle.keys()
        saved = {name: tuple(handle.get_slice(name).get_shape()) for name in names}
    if source == "transformers":
        assert saved == expected
    assert saved["transformer.h.0.attn.q_proj.weight"] == (40, 40)
    assert saved["transformer.h.2.mlp.c_fc.weight"] == (40, 40)
    assert AutoConfig.from_pretrained(out).model_type == "scratchformers-gpt2"
    reloaded = GPT2LMHeadModel.from_pretrained(out)
    for name, tensor in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name


def test_transformers_directories_still_load_as_transformers_models(make_pair: Callable) -> None:
    """Importing scratchformers.gpt2 does not take over model_type "gpt2" from transformers."""
    pair = make_pair()
    assert (
        type(AutoModelForCausalLM.from_pretrained(pair.directory)) is transformers.GPT2LMHeadModel
    )


def test_the_checkpoints_generation_config_is_honoured(
    make_theirs: Callable, tmp_path: Path
) -> None:
    """generate() with no options follows the directory's generation_config.json, as
    transformers does: a converted checkpoint keeps its generation defaults."""
    theirs = make_theirs()
    theirs.generation_config.max_new_tokens = 5
    theirs.generation_config.min_new_tokens = 5
    theirs.generation_config.num_beams = 2
    theirs.save_pretrained(tmp_path)
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    model = GPT2LMHeadModel.from_pretrained(tmp_path)
    assert model.generation_config.max_new_tokens == reloaded.generation_config.max_new_tokens == 5
    assert model.generation_config.num_beams == 2
    prompt = torch.randint(2, 101, (1, 4))
    assert torch.equal(model.generate(prompt), reloaded.generate(prompt))
