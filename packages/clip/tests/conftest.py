"""The CLIP tests' set-up: tiny models of odd sizes, and the same weights in transformers' CLIP
(or open_clip's) and in ours (``make_pair``).

The tiny shape: vision hidden 48 (3 heads), patch 4, 20x20 images; text hidden 40 (4 heads),
vocabulary 99, 16 positions; projection 24; 2 layers each. The randomize rule re-draws every
parameter, and sets the temperature's log near CLIP's (noise there would overflow the logits).
The kit's plugin gives the fixtures built on them; test modules are imported with
``--import-mode=importlib`` and cannot import each other, so every shared helper is a fixture.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest
import torch
import transformers

import scratchformers.clip as ours
from scratchformers.core_attention.testing import PLUGIN, PairSpec, randomize

pytest_plugins = [PLUGIN]

IMAGE = 20
VOCAB = 99
EOS, BOS, PAD = VOCAB - 1, VOCAB - 2, 0

TEXT = {
    "vocab_size": VOCAB,
    "hidden_size": 40,
    "intermediate_size": 52,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 16,
    "eos_token_id": EOS,
    "bos_token_id": BOS,
    "pad_token_id": PAD,
}
VISION = {
    "hidden_size": 48,
    "intermediate_size": 60,
    "num_hidden_layers": 2,
    "num_attention_heads": 3,
    "image_size": IMAGE,
    "patch_size": 4,
}


def config_fields(text: dict | None = None, vision: dict | None = None, **top: object) -> dict:
    """The tiny CLIP's config fields, with tower fields and top-level fields changed."""
    return {
        "text_config": {**TEXT, **(text or {})},
        "vision_config": {**VISION, **(vision or {})},
        "projection_dim": 24,
        **top,
    }


@pytest.fixture
def pair_spec() -> PairSpec:
    return PairSpec(
        kinds={"clip": (transformers.CLIPModel, ours.CLIPModel)},
        config=lambda text=None, vision=None: transformers.CLIPConfig(
            **config_fields(text, vision)
        ),
        randomize=partial(randomize, fixed={"logit_scale": 2.3}),
    )


@pytest.fixture
def image_size() -> int:
    return IMAGE


@pytest.fixture
def make_config() -> Callable[..., ours.CLIPConfig]:
    """``make_config(text=None, vision=None, **top)``: our tiny CLIPConfig."""
    return lambda text=None, vision=None, **top: ours.CLIPConfig(
        **config_fields(text, vision, **top)
    )


def padded_texts(batch: int = 3, seed: int = 2) -> dict[str, torch.Tensor]:
    """A right-padded batch of unequal texts, each ending in the end-of-text token: lengths
    13, 9, 5 (the longest shorter than the 16 positions)."""
    generator = torch.Generator().manual_seed(seed)
    lengths = [13, 9, 5, 11, 7][:batch]
    input_ids = torch.full((batch, max(lengths)), PAD)
    attention_mask = torch.zeros_like(input_ids)
    for row, length in enumerate(lengths):
        input_ids[row, 0] = BOS
        input_ids[row, 1 : length - 1] = torch.randint(1, BOS, (length - 2,), generator=generator)
        input_ids[row, length - 1] = EOS
        attention_mask[row, :length] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@pytest.fixture
def texts() -> Callable[..., dict[str, torch.Tensor]]:
    """``texts(batch=3, seed=2)``: see :func:`padded_texts`."""
    return padded_texts


@pytest.fixture
def make_processor(tmp_path_factory) -> Callable[..., transformers.CLIPProcessor]:
    """``make_processor(words)``: a CLIPProcessor with a word-level tokenizer over ``words``
    (ids after the padding and unknown tokens; BOS and EOS at the end of the tiny vocabulary)
    and CLIP's image processor at 20 pixels."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    def make(words: list[str]) -> transformers.CLIPProcessor:
        vocab = {"<pad>": PAD, "<unk>": 1}
        for word in words:
            vocab.setdefault(word, len(vocab))
        assert len(vocab) < BOS
        vocab.update({"<bos>": BOS, "<eos>": EOS})
        tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()]
        )
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<bos> $A <eos>", special_tokens=[("<bos>", BOS), ("<eos>", EOS)]
        )
        fast = transformers.PreTrainedTokenizerFast(
            tokenizer_object=tokenizer,
            pad_token="<pad>",
            unk_token="<unk>",
            bos_token="<bos>",
            eos_token="<eos>",
            model_input_names=["input_ids", "attention_mask"],
        )
        image_processor = transformers.CLIPImageProcessor(
            size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE}
        )
        return transformers.CLIPProcessor(image_processor=image_processor, tokenizer=fast)

    return make
