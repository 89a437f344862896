"""What a stack prepares before its layers: config checks, token ids, positions and masks; and
the labels a head's loss reads."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, DynamicCache, EncoderDecoderCache, GPT2Config, LlamaConfig

from scratchformers.core_attention import (
    Attention,
    LearnedPositionalEmbedding,
    TokenEmbedding,
    build_attention_mask,
    check_classification_labels,
    check_config,
    check_labels,
    check_token_labels,
    create_masks_for_generate,
    cross_attention_mask,
    prepare_attention_inputs,
)


def _config(implementation: str = "sdpa") -> LlamaConfig:
    config = LlamaConfig(hidden_size=12, num_attention_heads=3, num_hidden_layers=1)
    config._attn_implementation = implementation
    return config


# ---------------------------------------------------------------------------------------------
# check_config


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"vocab_size": 0}, r"vocab_size must be at least 1, got 0"),
        ({"hidden_size": -4}, r"hidden_size must be at least 1, got -4"),
        ({"num_attention_heads": 0}, r"num_attention_heads must be at least 1, got 0"),
        ({"num_key_value_heads": 0}, r"num_key_value_heads must be at least 1, got 0"),
        ({"num_hidden_layers": 0}, r"num_hidden_layers must be at least 1"),
        ({"intermediate_size": 0}, r"intermediate_size must be at least 1"),
        ({"rms_norm_eps": 0.0}, r"rms_norm_eps must be positive.*got 0.0"),
        ({"rms_norm_eps": -1.0}, r"rms_norm_eps must be positive.*got -1.0"),
        ({"num_key_value_heads": 2}, r"num_key_value_heads=2 must divide num_attention_heads=3"),
        ({"hidden_size": 13, "head_dim": None}, r"hidden_size=13 is not divisible by.*=3"),
        ({"attention_dropout": 1.0}, r"attention_dropout must be in \[0, 1\), got 1.0"),
    ],
)
def test_config_values_that_cannot_work_name_the_field(fields: dict, message: str) -> None:
    config = LlamaConfig(hidden_size=12, num_attention_heads=3, num_key_value_heads=3)
    for name, value in fields.items():
        setattr(config, name, value)
    with pytest.raises(ValueError, match=message):
        check_config(config)


def test_aliased_fields_are_named_as_the_user_wrote_them() -> None:
    # GPT-2 calls its width n_embd and its head count n_head.
    config = GPT2Config(n_embd=40, n_head=5)
    check_config(config)
    config.n_head = 0
    with pytest.raises(ValueError, match=r"n_head must be at least 1, got 0"):
        check_config(config)
    config = GPT2Config(n_embd=40, n_head=3)
    with pytest.raises(ValueError, match=r"n_embd=40 is not divisible by n_head=3"):
        check_config(config)
    config = GPT2Config(layer_norm_epsilon=-1.0)
    with pytest.raises(ValueError, match=r"layer_norm_epsilon must be positive"):
        check_config(config)
    config = GPT2Config(resid_pdrop=1.5)
    with pytest.raises(ValueError, match=r"resid_pdrop must be in \[0, 1\)"):
        check_config(config)


def test_a_working_config_passes_and_none_means_derived() -> None:
    config = LlamaConfig(hidden_size=12, num_attention_heads=3, num_key_value_heads=1)
    config.head_dim = None  # derived from the width
    check_config(config)


# ---------------------------------------------------------------------------------------------
# TokenEmbedding


def test_token_ids_outside_the_vocabulary_are_named() -> None:
    embedding = TokenEmbedding(10, 4)
    with pytest.raises(ValueError, match=r"token id 10, outside .* vocabulary of 10 tokens"):
        embedding(torch.tensor([[1, 2, 10]]))
    with pytest.raises(ValueError, match=r"token id -1"):
        embedding(torch.tensor([[-1, 2]]))
    assert embedding(torch.tensor([[0, 9]])).shape == (1, 2, 4)


def test_float_and_one_dimensional_ids_are_refused() -> None:
    embedding = TokenEmbedding(10, 4)
    with pytest.raises(ValueError, match=r"input_ids must hold integer token ids, got dtype"):
        embedding(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"input_ids must be \(batch, length\), got shape \(3,\)"):
        embedding(torch.tensor([1, 2, 3]))


def test_empty_ids_and_the_callers_argument_name() -> None:
    embedding = TokenEmbedding(10, 4)
    with pytest.raises(ValueError, match=r"input_ids is empty: shape \(2, 0\)"):
        embedding(torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"decoder_input_ids holds token id 12"):
        embedding(torch.tensor([[12]]), argument="decoder_input_ids")


def test_token_embedding_is_an_embedding_in_the_state_dict() -> None:
    embedding = TokenEmbedding(10, 4)
    plain = torch.nn.Embedding(10, 4)
    plain.load_state_dict(embedding.state_dict())
    ids = torch.tensor([[3, 1, 4]])
    assert torch.equal(embedding(ids), plain(ids))


# ---------------------------------------------------------------------------------------------
# LearnedPositionalEmbedding offset


def test_learned_positions_with_an_offset_read_rows_after_it() -> None:
    # BART's table has max_position_embeddings + 2 rows; position p is row p + 2.
    table = LearnedPositionalEmbedding(6, 3, offset=2)
    assert table.weight.shape == (8, 3)
    positions = torch.tensor([[0, 1, 5]])
    assert torch.equal(table(positions), table.weight[positions + 2])
    with pytest.raises(ValueError, match=r"position 6 is out of range.*max_position_embeddings=6"):
        table(torch.tensor([[6]]))


# ---------------------------------------------------------------------------------------------
# prepare_attention_inputs


def test_positions_follow_the_padding_or_count() -> None:
    embeds = torch.zeros(2, 4, 12)
    padding = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    following, _ = prepare_attention_inputs(
        _config(), embeds, padding, None, causal=True, positions="padding"
    )
    assert torch.equal(following, torch.tensor([[0, 0, 0, 1], [0, 1, 2, 3]]))
    counting, _ = prepare_attention_inputs(
        _config(), embeds, padding, None, causal=False, positions="count"
    )
    assert torch.equal(counting, torch.tensor([[0, 1, 2, 3]]))
    given = torch.tensor([[7, 8, 9, 10]])
    kept, _ = prepare_attention_inputs(_config(), embeds, padding, None, given, causal=True)
    assert kept is given


def test_counting_positions_continue_after_the_cache() -> None:
    cache = DynamicCache()
    cache.update(torch.zeros(1, 3, 5, 4), torch.zeros(1, 3, 5, 4), 0)
    positions, mask = prepare_attention_inputs(
        _config(), torch.zeros(1, 2, 12), None, cache, causal=True, positions="count"
    )
    assert torch.equal(positions, torch.tensor([[5, 6]]))
    expected = build_attention_mask(
        None, batch_size=1, query_length=2, key_length=7, causal=True, past_length=5
    )
    assert torch.equal(mask, expected)


def test_the_mask_is_the_one_builders_for_the_configured_backend() -> None:
    embeds = torch.zeros(2, 3, 12)
    padding = torch.tensor([[0, 1, 1], [1, 1, 1]])
    for implementation in ("sdpa", "eager", "flex_attention", "flash_attention_2"):
        _, mask = prepare_attention_inputs(
            _config(implementation), embeds, padding, None, causal=True
        )
        expected = build_attention_mask(
            padding,
            batch_size=2,
            query_length=3,
            key_length=3,
            causal=True,
            attn_implementation=implementation,
        )
        assert torch.equal(mask, expected), implementation


def test_an_encoder_decoder_cache_counts_its_self_attention_half() -> None:
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    cache.self_attention_cache.update(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), 0)
    cache.cross_attention_cache.update(torch.zeros(1, 3, 9, 4), torch.zeros(1, 3, 9, 4), 0)
    positions, _ = prepare_attention_inputs(
        _config(), torch.zeros(1, 1, 12), None, cache, causal=True, positions="count"
    )
    assert torch.equal(positions, torch.tensor([[4]]))


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (torch.ones(2, 3), r"attention_mask covers 3 tokens, but the inputs have 4"),
        (torch.ones(2, 5), r"attention_mask covers 5 tokens, but the inputs have 4"),
        (torch.ones(3, 4), r"attention_mask must be \(batch, keys\) = \(2, \.\.\.\).*\(3, 4\)"),
        (torch.ones(2, 1, 4), r"attention_mask must be \(batch, keys\).*\(2, 1, 4\)"),
    ],
)
def test_a_mask_that_does_not_fit_the_inputs_is_refused(mask: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prepare_attention_inputs(_config(), torch.zeros(2, 4, 12), mask, None, causal=True)
    with pytest.raises(ValueError, match="decoder_" + message):
        prepare_attention_inputs(
            _config(), torch.zeros(2, 4, 12), mask, None, causal=True, argument_prefix="decoder_"
        )


def test_with_a_cache_the_mask_must_cover_the_cached_tokens_too() -> None:
    cache = DynamicCache()
    cache.update(torch.zeros(1, 3, 5, 4), torch.zeros(1, 3, 5, 4), 0)
    with pytest.raises(ValueError, match=r"covers 2 tokens.*plus 5 cached"):
        prepare_attention_inputs(
            _config(), torch.zeros(1, 2, 12), torch.ones(1, 2), cache, causal=True
        )
    prepare_attention_inputs(_config(), torch.zeros(1, 2, 12), torch.ones(1, 7), cache, causal=True)


@pytest.mark.parametrize("shape", [(0, 3, 12), (2, 0, 12)])
def test_empty_inputs_are_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"decoder_inputs_embeds is empty: shape"):
        prepare_attention_inputs(
            _config(), torch.zeros(shape), None, None, causal=False, argument_prefix="decoder_"
        )


def test_cross_attention_mask_hides_encoder_padding_only() -> None:
    encoder_padding = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    mask = cross_attention_mask(_config(), torch.zeros(2, 3, 12), encoder_padding)
    assert mask.shape == (2, 1, 3, 5)
    assert torch.equal(mask[:, 0, 0], encoder_padding.bool())
    assert torch.equal(mask[:, 0, 2], encoder_padding.bool())
    assert cross_attention_mask(_config(), torch.zeros(2, 3, 12), None) is None
    assert cross_attention_mask(_config(), torch.zeros(2, 3, 12), torch.ones(2, 5)) is None


# ---------------------------------------------------------------------------------------------
# Mask values: 0/1 only


@pytest.mark.parametrize(
    ("bad", "shown"),
    [(0.5, "0.5"), (0.3, "0.3"), (-1.0, "-1"), (float("nan"), "nan"), (2, "2"), (-1, "-1")],
)
def test_a_mask_that_is_not_zero_or_one_is_refused(bad: float, shown: str) -> None:
    dtype = torch.long if isinstance(bad, int) else torch.float32
    mask = torch.ones(2, 4, dtype=dtype)
    mask[1, 2] = bad
    embeds = torch.zeros(2, 4, 12)
    pattern = rf"attention_mask holds {shown}, but masks are 0/1 \(bool, int or float\)"
    with pytest.raises(ValueError, match=pattern):
        prepare_attention_inputs(_config(), embeds, mask, None, causal=True)
    with pytest.raises(ValueError, match="decoder_" + pattern):
        prepare_attention_inputs(
            _config(), embeds, mask, None, causal=True, argument_prefix="decoder_"
        )
    with pytest.raises(ValueError, match=rf"encoder_attention_mask holds {shown}\b"):
        cross_attention_mask(_config(), embeds, mask)
    with pytest.raises(ValueError, match=rf"^attention_mask holds {shown}\b"):
        cross_attention_mask(_config(), embeds, mask, argument="attention_mask")
    # generate()'s own mask builder, which a static cache's loop calls with the user's mask.
    with pytest.raises(ValueError, match=pattern):
        create_masks_for_generate(_config(), embeds, mask, None)


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int32, torch.long, torch.float16])
def test_zero_one_masks_of_every_dtype_give_the_same_mask(dtype: torch.dtype) -> None:
    padding = torch.tensor([[0, 1, 1], [1, 1, 1]])
    embeds = torch.zeros(2, 3, 12)
    positions, mask = prepare_attention_inputs(
        _config(), embeds, padding.to(dtype), None, causal=True
    )
    expected_positions, expected = prepare_attention_inputs(
        _config(), embeds, padding, None, causal=True
    )
    assert torch.equal(mask, expected) and torch.equal(positions, expected_positions)
    cross = cross_attention_mask(_config(), embeds, padding.to(dtype))
    assert torch.equal(cross, cross_attention_mask(_config(), embeds, padding))


def test_prepared_four_dimensional_masks_are_not_read_as_zero_one() -> None:
    # An additive 4D mask (0 and the most negative float) is used as given.
    additive = torch.zeros(1, 1, 3, 3)
    additive[..., 0] = torch.finfo(torch.float32).min
    _, mask = prepare_attention_inputs(
        _config(), torch.zeros(1, 3, 12), additive, None, causal=True
    )
    assert mask is additive


# ---------------------------------------------------------------------------------------------
# Labels


def test_labels_outside_the_vocabulary_name_the_value_and_the_limit() -> None:
    labels = torch.tensor([[3, 97, -100], [0, 1, 2]])
    with pytest.raises(
        ValueError, match=r"labels holds 97, outside 0 \.\. 49 \(vocab_size=50\); -100 marks"
    ):
        check_labels(labels, shape=(2, 3), shape_of="input_ids", limit=50)
    labels[0, 1] = 50
    with pytest.raises(ValueError, match=r"labels holds 50, outside .*vocab_size=50"):
        check_labels(labels, shape=(2, 3), shape_of="input_ids", limit=50)
    # A negative id other than -100 is found even when a -100 is the smallest value.
    labels[0, 1] = -5
    with pytest.raises(ValueError, match=r"labels holds -5, outside 0 \.\. 49"):
        check_labels(labels, shape=(2, 3), shape_of="input_ids", limit=50)
    labels[0, 1] = 49
    check_labels(labels, shape=(2, 3), shape_of="input_ids", limit=50)  # -100 and 0..49 pass
    with pytest.raises(ValueError, match=r"labels holds -100, .*\(num_labels=4\); -1 marks"):
        check_labels(
            labels, shape=None, shape_of="", limit=4, limit_name="num_labels", ignore_index=-1
        )


def test_labels_of_another_shape_or_dtype_are_named() -> None:
    labels = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(
        ValueError, match=r"^labels must have the shape of input_ids \(2, 7\), got \(2, 5\)$"
    ):
        check_labels(labels, shape=torch.Size([2, 7]), shape_of="input_ids", limit=50)
    with pytest.raises(
        ValueError,
        match=r"labels must hold integer ids in 0 \.\. 49 \(vocab_size=50\), got dtype torch\.float32",
    ):
        check_labels(labels.float(), shape=(2, 5), shape_of="input_ids", limit=50)
    # Float targets (no limit): any value, the shape still checked.
    check_labels(torch.full((2, 5), 123.0), shape=(2, 5), shape_of="the logits")
    with pytest.raises(ValueError, match=r"the shape of the logits \(2, 4\), got \(2, 5\)"):
        check_labels(torch.zeros(2, 5), shape=(2, 4), shape_of="the logits")


def test_token_labels_follow_the_tokens_the_user_passed() -> None:
    labels = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match=r"the shape of input_ids \(2, 6\), got \(2, 5\)"):
        check_token_labels(labels, torch.zeros(2, 6, dtype=torch.long), None, 50)
    with pytest.raises(
        ValueError, match=r"the shape of decoder_inputs_embeds' \(batch, length\) \(2, 4\)"
    ):
        check_token_labels(labels, None, torch.zeros(2, 4, 8), 50, argument_prefix="decoder_")
    # Without decoder inputs (they will be the labels shifted right) only the ids are checked.
    check_token_labels(labels, None, None, 50)
    with pytest.raises(ValueError, match=r"labels holds 50\b"):
        check_token_labels(labels + 50, None, None, 50)


def _classifier(num_labels: int, problem_type: str | None = None) -> BertConfig:
    return BertConfig(num_labels=num_labels, problem_type=problem_type)


def test_class_ids_are_checked_against_num_labels() -> None:
    logits = torch.zeros(3, 4)
    config = _classifier(4)
    check_classification_labels(torch.tensor([0, 3, -100]), logits, config)
    check_classification_labels(torch.tensor([[0], [3], [1]]), logits, config)  # (batch, 1)
    assert config.problem_type is None  # inferred as the loss does, not written
    with pytest.raises(ValueError, match=r"labels holds 4, outside 0 \.\. 3 \(num_labels=4\)"):
        check_classification_labels(torch.tensor([0, 4, 1]), logits, config)
    with pytest.raises(
        ValueError, match=r"labels must have the shape of the logits' batch \(3,\), got \(2,\)"
    ):
        check_classification_labels(torch.tensor([0, 1]), logits, config)
    single = _classifier(4, "single_label_classification")
    with pytest.raises(ValueError, match=r"integer ids .*num_labels=4.*torch\.float32"):
        check_classification_labels(torch.tensor([0.0, 1.0, 2.0]), logits, single)


def test_float_targets_are_not_range_checked_but_their_shape_is() -> None:
    # Regression with one output: any value, one per example.
    check_classification_labels(torch.tensor([-7.5, 80.0, 0.5]), torch.zeros(3, 1), _classifier(1))
    with pytest.raises(ValueError, match=r"the logits' batch \(3,\), got \(3, 2\)"):
        check_classification_labels(torch.zeros(3, 2), torch.zeros(3, 1), _classifier(1))
    # Regression with several outputs, and multi-label (inferred from float labels).
    regression = _classifier(4, "regression")
    check_classification_labels(torch.full((3, 4), 9.0), torch.zeros(3, 4), regression)
    for config in (regression, _classifier(4)):
        with pytest.raises(ValueError, match=r"the shape of the logits \(3, 4\), got \(3,\)"):
            check_classification_labels(torch.zeros(3), torch.zeros(3, 4), config)
    multi_label = _classifier(4, "multi_label_classification")
    with pytest.raises(ValueError, match=r"float 0/1 targets for multi-label .*torch\.int64"):
        check_classification_labels(
            torch.ones(3, 4, dtype=torch.long), torch.zeros(3, 4), multi_label
        )


def test_the_checks_do_not_break_a_fullgraph_compile() -> None:
    """Value checks (a device sync each) are skipped while dynamo traces; shape and dtype
    checks stay in the graph. ``fullgraph=True`` raises on any graph break."""
    config, classifier = _config(), _classifier(4)

    def forward(embeds: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _, attention = prepare_attention_inputs(config, embeds, mask, None, causal=True)
        check_token_labels(labels, None, embeds, 50)
        check_classification_labels(labels[:, 0], embeds[:, 0, :4], classifier)
        return embeds.sum() + attention.sum()

    compiled = torch.compile(forward, fullgraph=True, backend="eager")
    embeds, labels = torch.ones(2, 3, 12), torch.tensor([[1, 2, -100], [3, 0, 1]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    assert torch.equal(compiled(embeds, mask, labels), forward(embeds, mask, labels))
    # The price, as documented: in the compiled graph a bad value goes unchecked.
    twos, bad = mask * 2, labels.masked_fill(labels == 3, 60)
    compiled(embeds, twos, bad)
    with pytest.raises(ValueError, match="attention_mask holds 2"):
        forward(embeds, twos, labels)
    with pytest.raises(ValueError, match="labels holds 60"):
        forward(embeds, mask, bad)


# ---------------------------------------------------------------------------------------------
# Attention probabilities that a backend cannot return


@pytest.mark.parametrize("how", ["argument", "config"])
def test_attentions_requested_from_sdpa_are_an_error(how: str) -> None:
    config = _config("sdpa")
    attention = Attention(12, 3, config=config)
    states = torch.randn(1, 4, 12)
    kwargs = {}
    if how == "argument":
        kwargs["output_attentions"] = True
    else:
        # transformers refuses to set the flag while sdpa is configured; set it under eager.
        config._attn_implementation = "eager"
        config.output_attentions = True
        config._attn_implementation = "sdpa"
    with pytest.raises(ValueError, match=r"output_attentions needs the eager backend.*'sdpa'"):
        attention(states, **kwargs)
    config._attn_implementation = "eager"
    _, probabilities = attention(states, **kwargs)
    assert probabilities.shape == (1, 3, 4, 4)
    config._attn_implementation = "sdpa"
    assert attention(states, output_attentions=False)[1] is None
