"""Shared set-up for the CLIP tests: offline, seeded, tiny models of odd sizes, and the same
weights in transformers' CLIP (or open_clip's) and in ours.

The tiny shape: vision hidden 48 (3 heads), patch 4, 20x20 images; text hidden 40 (4 heads),
vocabulary 99, 16 positions; projection 24; 2 layers each. Every comparison starts from a
reference whose parameters are all re-drawn (norms, embeddings and the temperature too), so
that a wrongly mapped tensor cannot hide behind a zero or a one.

Test modules are imported with ``--import-mode=importlib`` and cannot import each other, so
every shared helper is a fixture here.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

from collections.abc import Callable

import pytest
import torch
import transformers

import scratchformers.clip as ours

torch.set_num_threads(2)

IMAGE, PATCH = 20, 4
VOCAB, POSITIONS = 99, 16
EOS, BOS, PAD = VOCAB - 1, VOCAB - 2, 0
TOLERANCE = 1e-4

TEXT = {
    "vocab_size": VOCAB,
    "hidden_size": 40,
    "intermediate_size": 52,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": POSITIONS,
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
    "patch_size": PATCH,
}

_LARGEST: dict[str, tuple[float, str]] = {}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for what, (value, where) in sorted(_LARGEST.items()):
        terminalreporter.write_line(f"largest {what} difference: {value:.3g} ({where})")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def config_fields(text: dict | None = None, vision: dict | None = None, **top: object) -> dict:
    """The tiny CLIP's config fields, with tower fields and top-level fields changed."""
    return {
        "text_config": {**TEXT, **(text or {})},
        "vision_config": {**VISION, **(vision or {})},
        "projection_dim": 24,
        **top,
    }


@pytest.fixture
def make_config() -> Callable[..., ours.CLIPConfig]:
    """``make_config(text=None, vision=None, **top)``: our tiny CLIPConfig."""
    return lambda text=None, vision=None, **top: ours.CLIPConfig(
        **config_fields(text, vision, **top)
    )


def _is_norm(name: str) -> bool:
    """A LayerNorm's parameter, in our and transformers' names or OpenAI's (``ln_1``, ...)."""
    module = name.rpartition(".")[0].rpartition(".")[2]
    return "norm" in module or module.startswith("ln_")


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Re-draw every parameter: norm weights ~ N(1, 0.2), everything else ~ N(0, 0.2), the
    temperature's log near CLIP's."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator) * 0.2
            if name == "logit_scale":
                parameter.fill_(2.3)
            elif _is_norm(name) and name.endswith("weight"):
                parameter.copy_(noise + 1.0)
            else:
                parameter.copy_(noise)
    return model


@pytest.fixture
def randomized() -> Callable[..., torch.nn.Module]:
    return randomize


@pytest.fixture
def make_theirs() -> Callable[..., transformers.CLIPModel]:
    """``make_theirs(seed=0, attn_implementation=None, text=None, vision=None)``: transformers'
    CLIPModel with random weights, in eval mode."""

    def make(seed: int = 0, attn_implementation: str | None = None, text=None, vision=None):
        config = transformers.CLIPConfig(**config_fields(text, vision))
        if attn_implementation is not None:
            config._attn_implementation = attn_implementation
        return randomize(transformers.CLIPModel(config), seed).eval()

    return make


@pytest.fixture
def make_pair(make_theirs, tmp_path_factory) -> Callable[..., tuple]:
    """``make_pair(seed=0, attn_implementation=None, text=None, vision=None)``: (theirs,
    ours, directory): transformers' model saved with ``save_pretrained`` and loaded into our
    class through the real conversion."""

    def make(seed: int = 0, attn_implementation: str | None = None, text=None, vision=None):
        theirs = make_theirs(seed, attn_implementation, text, vision)
        directory = tmp_path_factory.mktemp("transformers-clip")
        theirs.save_pretrained(directory)
        kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
        loaded = ours.CLIPModel.from_pretrained(directory, **kwargs)
        assert type(loaded) is ours.CLIPModel
        return theirs, loaded.eval(), directory

    return make


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
    return padded_texts


def random_images(batch: int = 3, size: int = IMAGE, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((batch, 3, size, size), generator=generator)


@pytest.fixture
def images() -> Callable[..., torch.Tensor]:
    return random_images


@pytest.fixture
def assert_matches(request: pytest.FixtureRequest) -> Callable[..., float]:
    """``assert_matches(ours, theirs, what)``: max abs difference at most 1e-4, between tensors
    that are not degenerate; the largest of the session is printed at the end."""

    def check(actual: torch.Tensor, expected: torch.Tensor, what: str) -> float:
        assert actual.shape == expected.shape, (actual.shape, expected.shape)
        actual, expected = actual.detach().float(), expected.detach().float()
        assert torch.isfinite(actual).all() and torch.isfinite(expected).all()
        assert float(expected.std()) > 1e-3, f"degenerate {what}"
        difference = float((actual - expected).abs().max())
        if difference > _LARGEST.get(what, (-1.0, ""))[0]:
            _LARGEST[what] = (difference, request.node.name)
        assert difference <= TOLERANCE, f"max abs {what} difference {difference:.3g}"
        return difference

    return check


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
