"""The benchmark rows: each is one of our models and transformers' model with the same weights.

A row builds both sides from one size and returns them loaded with identical weights, so that
every number compares the same computation. A model package that lands later joins the
benchmark by adding a function to ``ROWS``; the runner does not change.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import torch
import transformers
from torch import nn
from transformers import GenerationConfig

from .measure import causal_lm_flops, masked_lm_flops

SIZES = {
    # For checking that the runner works, in seconds; its numbers mean little.
    "tiny": {"n_embd": 32, "n_layer": 2, "n_head": 2, "vocab_size": 128, "n_positions": 128},
    # Small enough for 2 CPU cores; the default.
    "small": {"n_embd": 256, "n_layer": 4, "n_head": 4, "vocab_size": 8192, "n_positions": 1024},
    # GPT-2 (124M) shape.
    "gpt2": {"n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257, "n_positions": 1024},
    # GPT-2 medium shape.
    "gpt2-medium": {
        "n_embd": 1024,
        "n_layer": 24,
        "n_head": 16,
        "vocab_size": 50257,
        "n_positions": 1024,
    },
}


@dataclass
class Row:
    """One comparison: ``ours`` and ``theirs`` compute the same function with the same weights."""

    name: str
    reference: str  # what we compare against, in words
    ours: nn.Module
    theirs: nn.Module
    generative: bool
    n_layer: int
    n_embd: int
    vocab_size: int
    # Shapes that differ from GPT-2's, for counting FLOPs: the MLP width (None = 4 * n_embd),
    # the width of the k and v projections (kv heads * head_dim; None = n_embd), and whether
    # the MLP is gated (three matrices, gate/up/down, instead of two).
    n_inner: int | None = None
    kv_width: int | None = None
    gated_mlp: bool = False
    unit: str = "tokens"  # what the forward and training throughputs count

    # What the runner asks of a row. These fit language models; a row for another kind of
    # model (images, two towers) subclasses Row and overrides them, and the runner stays as is.

    def inputs(self, batch: int, length: int, device: torch.device) -> dict[str, object]:
        """Keyword arguments of one forward pass: random token ids, no cache."""
        input_ids = torch.randint(1, self.vocab_size, (batch, length), device=device)
        return {"input_ids": input_ids, "use_cache": False}

    def training_inputs(self, inputs: dict[str, object]) -> dict[str, object]:
        """``inputs`` plus what makes the model return a loss (next-token labels)."""
        return inputs | {"labels": inputs["input_ids"]}

    def items(self, batch: int, length: int) -> int:
        """How many ``unit`` one forward of ``inputs(batch, length)`` processes."""
        return batch * length

    def encoders(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        """More forward workloads, timed like the forward: name -> (a method both sides have,
        the keys of ``inputs`` it takes). CLIP's towers, say; none by default."""
        return {}

    def compared_output(self, output: object) -> torch.Tensor:
        """The tensor of a forward's output that must agree between the two sides."""
        return output.logits

    def forward_model(self, side: str) -> nn.Module:
        """The model whose forward is timed for ``side`` (``"ours"`` or ``"theirs"``): the
        row's own, unless the row times another state of it (LoRA merged, say)."""
        return getattr(self, side)

    def generation_config(self) -> GenerationConfig:
        """What ``generate()`` runs with on both sides: greedy, padding id 0."""
        return GenerationConfig(pad_token_id=0, do_sample=False)

    def extra_generate_variants(self) -> dict[str, dict[str, object]]:
        """``generate()`` options timed besides the cache variants (beam search, say), on both
        sides alike; left out of "best against best", which races the cache variants."""
        return {}

    def forward_flops(self, batch: int, length: int) -> float:
        """Matmul FLOPs of one forward of ``inputs(batch, length)``."""
        return causal_lm_flops(
            self.n_layer,
            self.n_embd,
            self.vocab_size,
            batch,
            length,
            n_inner=self.n_inner,
            kv_width=self.kv_width,
            gated_mlp=self.gated_mlp,
        )


def _gpt2_reference(size: dict[str, int]) -> transformers.GPT2LMHeadModel:
    special = size["vocab_size"] - 1  # GPT-2's <|endoftext|> is its last token
    config = transformers.GPT2Config(
        **size,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=special,
        eos_token_id=special,
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


def gpt2_row(size: dict[str, int]) -> Row:
    """Our GPT-2 against transformers' GPT-2, loaded from the same checkpoint layout."""
    from scratchformers.gpt2 import GPT2LMHeadModel
    from scratchformers.gpt2.convert import CONVERTER

    theirs = _gpt2_reference(size)
    ours = GPT2LMHeadModel(CONVERTER.config_from_transformers(theirs.config.to_dict()))
    ours.load_state_dict(CONVERTER.state_from_transformers(theirs.state_dict()), strict=False)
    return Row(
        "gpt2",
        "transformers GPT2LMHeadModel",
        ours.eval(),
        theirs,
        True,
        size["n_layer"],
        size["n_embd"],
        size["vocab_size"],
    )


def basicformer_row(size: dict[str, int]) -> Row:
    """BasicFormer configured as GPT-2 (learned positions, pre-norm, gelu_new, biases, tied
    embeddings) against transformers' GPT-2 with the same weights."""
    from scratchformers.basicformer import BasicFormerConfig, BasicFormerForCausalLM
    from scratchformers.gpt2.convert import CONVERTER

    theirs = _gpt2_reference(size)
    config = BasicFormerConfig(
        vocab_size=size["vocab_size"],
        hidden_size=size["n_embd"],
        num_hidden_layers=size["n_layer"],
        num_attention_heads=size["n_head"],
        max_position_embeddings=size["n_positions"],
        hidden_act="gelu_new",
        position_embedding_type="learned",
        norm_position="pre",
        pad_token_id=None,
        bos_token_id=theirs.config.bos_token_id,
        eos_token_id=theirs.config.eos_token_id,
    )
    ours = BasicFormerForCausalLM(config)
    renames = {
        "transformer.wte.": "model.decoder.embed_tokens.",
        "transformer.wpe.": "model.decoder.embed_positions.",
        "transformer.ln_f.": "model.decoder.final_norm.",
        ".ln_1.": ".self_attn_norm.",
        ".attn.": ".self_attn.",
        ".ln_2.": ".mlp_norm.",
        ".mlp.c_fc.": ".mlp.up_proj.",
        ".mlp.c_proj.": ".mlp.down_proj.",
        "transformer.h.": "model.decoder.layers.",
    }
    state = {}
    for name, tensor in CONVERTER.state_from_transformers(theirs.state_dict()).items():
        for old, new in renames.items():
            name = name.replace(old, new)
        state[name] = tensor
    missing, unexpected = ours.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    return Row(
        "basicformer",
        "transformers GPT2LMHeadModel (same weights)",
        ours.eval(),
        theirs,
        True,
        size["n_layer"],
        size["n_embd"],
        size["vocab_size"],
    )


def basicformer_llama_row(size: dict[str, int]) -> Row:
    """BasicFormer configured as a Llama (rotary, RMSNorm, gated SiLU MLP, grouped-query
    attention with half as many key/value heads, no biases, untied head) against transformers'
    Llama with the same weights."""
    from scratchformers.basicformer import BasicFormerForCausalLM
    from scratchformers.basicformer.llama import basicformer_state_from_llama, config_from_llama

    width, heads = size["n_embd"], size["n_head"]
    kv_heads = max(1, heads // 2)
    inner = -(-round(8 / 3 * width) // 64) * 64  # Llama's 8/3 * d, rounded up to a multiple of 64
    special = size["vocab_size"] - 1
    config = transformers.LlamaConfig(
        vocab_size=size["vocab_size"],
        hidden_size=width,
        num_hidden_layers=size["n_layer"],
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=inner,
        max_position_embeddings=size["n_positions"],
        bos_token_id=special,
        eos_token_id=special,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    theirs = transformers.LlamaForCausalLM(config).eval()
    ours = BasicFormerForCausalLM(config_from_llama(theirs.config))
    ours.load_state_dict(basicformer_state_from_llama(theirs.state_dict()))  # strict
    return Row(
        "basicformer-llama",
        "transformers LlamaForCausalLM (same weights)",
        ours.eval(),
        theirs,
        True,
        size["n_layer"],
        width,
        size["vocab_size"],
        n_inner=inner,
        kv_width=kv_heads * (width // heads),
        gated_mlp=True,
    )


@dataclass
class MaskedLMRow(Row):
    """A BERT-style encoder: padded batches with an attention mask, and a training step on
    masked-language-model labels (15% of the positions; the rest -100, ignored)."""

    def inputs(self, batch: int, length: int, device: torch.device) -> dict[str, object]:
        input_ids = torch.randint(1, self.vocab_size, (batch, length), device=device)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}

    def training_inputs(self, inputs: dict[str, object]) -> dict[str, object]:
        input_ids = inputs["input_ids"]
        generator = torch.Generator().manual_seed(0)
        chosen = torch.rand(input_ids.shape, generator=generator) < 0.15
        labels = input_ids.masked_fill(~chosen.to(input_ids.device), -100)
        return inputs | {"labels": labels}

    def forward_flops(self, batch: int, length: int) -> float:
        return masked_lm_flops(self.n_layer, self.n_embd, self.vocab_size, batch, length)


def bert_mlm_row(size: dict[str, int]) -> Row:
    """Our BertForMaskedLM against transformers' BertForMaskedLM, loaded from the same
    transformers checkpoint layout through our converter."""
    from scratchformers.bert_mlm import BertForMaskedLM
    from scratchformers.bert_mlm.convert import CONVERTER

    config = transformers.BertConfig(
        vocab_size=size["vocab_size"],
        hidden_size=size["n_embd"],
        num_hidden_layers=size["n_layer"],
        num_attention_heads=size["n_head"],
        intermediate_size=4 * size["n_embd"],
        max_position_embeddings=size["n_positions"],
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    theirs = transformers.BertForMaskedLM(config).eval()
    ours = BertForMaskedLM(CONVERTER.config_from_transformers(theirs.config.to_dict()))
    missing, unexpected = ours.load_state_dict(
        CONVERTER.state_from_transformers(theirs.state_dict()), strict=False
    )
    tied = {"cls.decoder.weight", "cls.decoder.bias"}  # filled by the ties, not the file
    assert not unexpected and set(missing) <= tied, (missing, unexpected)
    return MaskedLMRow(
        "bert-mlm",
        "transformers BertForMaskedLM (same weights)",
        ours.eval(),
        theirs,
        False,
        size["n_layer"],
        size["n_embd"],
        size["vocab_size"],
    )


@dataclass
class ImageClassificationRow(Row):
    """A ViT classifier: batches of random images at the configured size, and a training step
    on class labels. ``length`` means nothing here: the sequence is the patches plus the class
    token, set by the image and patch sizes."""

    image_size: int = 64
    patch_size: int = 8
    num_channels: int = 3
    num_labels: int = 10
    unit: str = "images"

    def inputs(self, batch: int, length: int, device: torch.device) -> dict[str, object]:
        shape = (batch, self.num_channels, self.image_size, self.image_size)
        return {"pixel_values": torch.randn(shape, device=device)}

    def training_inputs(self, inputs: dict[str, object]) -> dict[str, object]:
        pixels = inputs["pixel_values"]
        generator = torch.Generator().manual_seed(0)
        labels = torch.randint(0, self.num_labels, (pixels.shape[0],), generator=generator)
        return inputs | {"labels": labels.to(pixels.device)}

    def items(self, batch: int, length: int) -> int:
        return batch

    def forward_flops(self, batch: int, length: int) -> float:
        """The encoder as in :func:`causal_lm_flops` over the patches and the class token
        (no LM head), plus the patch projection (a matmul of each patch's pixels, 2 * c * p^2
        * d per patch) and the classifier on one vector per image (2 * d * labels)."""
        patches = (self.image_size // self.patch_size) ** 2
        encoder = causal_lm_flops(self.n_layer, self.n_embd, 0, batch, patches + 1)
        projection = 2 * self.num_channels * self.patch_size**2 * self.n_embd * patches * batch
        return encoder + projection + 2 * self.n_embd * self.num_labels * batch


def vit_row(size: dict[str, int]) -> Row:
    """Our ViTForImageClassification against transformers', loaded from the same transformers
    checkpoint layout through our converter. 64x64 images in 8x8 patches (65 tokens), or
    ViT-B/16's 224x224 in 16x16 (197 tokens) from GPT-2's width up; 10 labels."""
    from scratchformers.vit import ViTForImageClassification
    from scratchformers.vit.convert import CONVERTER

    image_size, patch_size = (224, 16) if size["n_embd"] >= 768 else (64, 8)
    config = transformers.ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=size["n_embd"],
        num_hidden_layers=size["n_layer"],
        num_attention_heads=size["n_head"],
        intermediate_size=4 * size["n_embd"],
        num_labels=10,
    )
    torch.manual_seed(0)
    theirs = transformers.ViTForImageClassification(config).eval()
    ours = ViTForImageClassification(CONVERTER.config_from_transformers(theirs.config.to_dict()))
    ours.load_state_dict(CONVERTER.state_from_transformers(theirs.state_dict()))  # strict
    return ImageClassificationRow(
        "vit",
        "transformers ViTForImageClassification (same weights)",
        ours.eval(),
        theirs,
        False,
        size["n_layer"],
        size["n_embd"],
        0,  # no vocabulary: the inputs are images
        image_size=image_size,
        patch_size=patch_size,
        num_labels=config.num_labels,
    )


@dataclass
class MaskedImageRow(Row):
    """A masked autoencoder (ViTMAE): batches of random images at the configured size, and one
    ``noise`` tensor that both sides get, so that they hide the same patches. The training step
    is the reconstruction loss (no labels). ``n_layer`` and ``n_embd`` are the encoder's, which
    runs on the class token and the kept patches; the decoder has its own depth and width and
    runs on every patch and the class token. ``length`` means nothing here."""

    image_size: int = 64
    patch_size: int = 8
    num_channels: int = 3
    mask_ratio: float = 0.75
    decoder_layers: int = 1
    decoder_embd: int = 16
    decoder_inner: int = 64
    unit: str = "images"

    @property
    def patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def inputs(self, batch: int, length: int, device: torch.device) -> dict[str, object]:
        shape = (batch, self.num_channels, self.image_size, self.image_size)
        noise = torch.rand((batch, self.patches), generator=torch.Generator().manual_seed(0))
        return {"pixel_values": torch.randn(shape, device=device), "noise": noise.to(device)}

    def training_inputs(self, inputs: dict[str, object]) -> dict[str, object]:
        return inputs  # the loss needs only the images

    def items(self, batch: int, length: int) -> int:
        return batch

    def forward_flops(self, batch: int, length: int) -> float:
        """The patch projection on every patch (all are embedded, then the kept ones chosen:
        2 * c * p^2 * d each), the encoder as in :func:`causal_lm_flops` over the class token
        and the kept patches, the map to the decoder's width on those (2 * d * d_dec each),
        the decoder's layers over every patch and the class token, and the pixel prediction
        on those (2 * d_dec * c * p^2 each)."""
        pixels = self.num_channels * self.patch_size**2
        kept = int(self.patches * (1 - self.mask_ratio))
        projection = 2 * pixels * self.n_embd * self.patches * batch
        encoder = causal_lm_flops(self.n_layer, self.n_embd, 0, batch, kept + 1)
        to_decoder = 2 * self.n_embd * self.decoder_embd * (kept + 1) * batch
        decoder = causal_lm_flops(
            self.decoder_layers,
            self.decoder_embd,
            0,
            batch,
            self.patches + 1,
            n_inner=self.decoder_inner,
        )
        prediction = 2 * self.decoder_embd * pixels * (self.patches + 1) * batch
        return projection + encoder + to_decoder + decoder + prediction


def vitmae_row(size: dict[str, int]) -> Row:
    """Our ViTMAEForPreTraining against transformers', loaded from the same transformers
    checkpoint layout through our converter, with the same noise (75% of the patches hidden).
    64x64 images in 8x8 patches and a decoder of half the width and depth, or from GPT-2's
    width up ViT-B/16's 224x224 in 16x16 and MAE's decoder (8 layers of width 512, 16 heads)."""
    from scratchformers.vitmae import ViTMAEForPreTraining, sincos_position_table
    from scratchformers.vitmae.convert import CONVERTER

    width, depth, heads = size["n_embd"], size["n_layer"], size["n_head"]
    if width >= 768:
        image_size, patch_size = 224, 16
        decoder_width, decoder_depth, decoder_heads = 512, 8, 16
    else:
        image_size, patch_size = 64, 8
        decoder_width, decoder_depth, decoder_heads = width // 2, max(1, depth // 2), heads
    config = transformers.ViTMAEConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=width,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        intermediate_size=4 * width,
        decoder_hidden_size=decoder_width,
        decoder_num_hidden_layers=decoder_depth,
        decoder_num_attention_heads=decoder_heads,
        decoder_intermediate_size=4 * decoder_width,
        mask_ratio=0.75,
    )
    torch.manual_seed(0)
    theirs = transformers.ViTMAEForPreTraining(config).eval()
    grid = (image_size // patch_size,) * 2
    with torch.no_grad():  # transformers 5.24 leaves a fresh model's fixed positions at zero
        theirs.vit.embeddings.position_embeddings.copy_(sincos_position_table(grid, width))
        theirs.decoder.decoder_pos_embed.copy_(sincos_position_table(grid, decoder_width))
    ours = ViTMAEForPreTraining(CONVERTER.config_from_transformers(theirs.config.to_dict()))
    ours.load_state_dict(CONVERTER.state_from_transformers(theirs.state_dict()))  # strict
    return MaskedImageRow(
        "vitmae",
        "transformers ViTMAEForPreTraining (same weights, same noise)",
        ours.eval(),
        theirs,
        False,
        depth,
        width,
        0,  # no vocabulary: the inputs are images
        image_size=image_size,
        patch_size=patch_size,
        mask_ratio=config.mask_ratio,
        decoder_layers=decoder_depth,
        decoder_embd=decoder_width,
        decoder_inner=config.decoder_intermediate_size,
    )


@dataclass
class LoraRow(Row):
    """A LoRA adapter on a causal LM, ours against peft's on the same base model with the same
    adapter weights. The training step trains the adapters only (the base frozen); the forward
    is timed after merging (``lora.merge`` against peft's ``merge_adapter``: both keep their
    adapter layers, which then cost what the base layers cost)."""

    _merged: dict[str, nn.Module] | None = None

    def forward_model(self, side: str) -> nn.Module:
        if self._merged is None:
            from scratchformers import lora

            ours, theirs = copy.deepcopy(self.ours), copy.deepcopy(self.theirs)
            lora.merge(ours)
            theirs.merge_adapter()
            self._merged = {"ours": ours.eval(), "theirs": theirs.eval()}
        return self._merged[side]


LORA_TARGETS = ["q_proj", "v_proj"]


def lora_row(size: dict[str, int]) -> Row:
    """Our LoRA against peft's LoRA (rank 8, alpha 16, no dropout, on every layer's query and
    value projections) on two copies of our GPT-2 with the same weights, and the same adapter
    weights (B drawn at random instead of peft's zeros, so that the adapter changes the
    output)."""
    import peft

    from scratchformers import lora
    from scratchformers.gpt2 import GPT2LMHeadModel
    from scratchformers.gpt2.convert import CONVERTER

    reference = _gpt2_reference(size)
    base = GPT2LMHeadModel(CONVERTER.config_from_transformers(reference.config.to_dict()))
    base.load_state_dict(CONVERTER.state_from_transformers(reference.state_dict()), strict=False)
    ours = lora.inject(
        copy.deepcopy(base),
        lora.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS),
    )
    theirs = peft.get_peft_model(
        copy.deepcopy(base),
        peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS),
    )
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in ours.named_parameters():
            if ".lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
                theirs.get_parameter(f"base_model.model.{name}").copy_(parameter)
    return LoraRow(
        "lora",
        "peft LoRA on our GPT-2 (same base and adapter weights)",
        ours.eval(),
        theirs.eval(),
        False,
        size["n_layer"],
        size["n_embd"],
        size["vocab_size"],
    )


@dataclass
class ContrastiveRow(Row):
    """A CLIP: random images and end-of-text-terminated texts of ``min(length, 77)`` tokens
    (CLIP's context), one text per image; the training step is the contrastive loss on the
    batch. The image and the text towers are also timed alone (``get_image_features``,
    ``get_text_features``). ``n_layer`` and ``n_embd`` are the image tower's."""

    image_size: int = 64
    patch_size: int = 8
    text_layers: int = 2
    text_embd: int = 32
    max_text_length: int = 77
    projection_dim: int = 32
    unit: str = "image-text pairs"

    def text_length(self, length: int) -> int:
        return min(length, self.max_text_length)

    def inputs(self, batch: int, length: int, device: torch.device) -> dict[str, object]:
        generator = torch.Generator().manual_seed(0)
        tokens = self.text_length(length)
        input_ids = torch.randint(1, self.vocab_size - 1, (batch, tokens), generator=generator)
        input_ids[:, -1] = self.vocab_size - 1  # the end-of-text token, where texts are read
        pixels = torch.randn((batch, 3, self.image_size, self.image_size), generator=generator)
        return {
            "input_ids": input_ids.to(device),
            "attention_mask": torch.ones_like(input_ids).to(device),
            "pixel_values": pixels.to(device),
        }

    def training_inputs(self, inputs: dict[str, object]) -> dict[str, object]:
        return inputs | {"return_loss": True}

    def items(self, batch: int, length: int) -> int:
        return batch

    def encoders(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        return {
            "image encoding": ("get_image_features", ("pixel_values",)),
            "text encoding": ("get_text_features", ("input_ids", "attention_mask")),
        }

    def compared_output(self, output: object) -> torch.Tensor:
        return output.logits_per_image

    def forward_flops(self, batch: int, length: int) -> float:
        """Both towers as in :func:`causal_lm_flops` (the image tower over the patches and the
        class token, with its patch projection; the text tower over its tokens), and the two
        projections into the shared space, once per image and text."""
        patches = (self.image_size // self.patch_size) ** 2
        vision = causal_lm_flops(self.n_layer, self.n_embd, 0, batch, patches + 1)
        vision += 2 * 3 * self.patch_size**2 * self.n_embd * patches * batch
        text = causal_lm_flops(self.text_layers, self.text_embd, 0, batch, self.text_length(length))
        projections = 2 * (self.n_embd + self.text_embd) * self.projection_dim * batch
        return vision + text + projections


def clip_row(size: dict[str, int]) -> Row:
    """Our CLIPModel against transformers', loaded from the same transformers checkpoint
    layout through our converter: an image tower of the size's width and depth on 64x64 images
    in 8x8 patches and a text tower of half the width over the size's vocabulary, or from
    GPT-2's width up OpenAI's ViT-B/32 shape (224x224 in 32x32; text 512 wide, 12 layers)."""
    from scratchformers.clip import CLIPModel
    from scratchformers.clip.convert import CONVERTER

    width, depth, heads = size["n_embd"], size["n_layer"], size["n_head"]
    vocab_size = size["vocab_size"]
    if width >= 768:
        image_size, patch_size, text_width, text_depth, text_heads = 224, 32, 512, 12, 8
    else:
        image_size, patch_size = 64, 8
        text_width, text_depth, text_heads = width // 2, depth, max(1, heads // 2)
    config = transformers.CLIPConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": text_width,
            "intermediate_size": 4 * text_width,
            "num_hidden_layers": text_depth,
            "num_attention_heads": text_heads,
            "max_position_embeddings": 77,
            "eos_token_id": vocab_size - 1,
        },
        vision_config={
            "image_size": image_size,
            "patch_size": patch_size,
            "hidden_size": width,
            "intermediate_size": 4 * width,
            "num_hidden_layers": depth,
            "num_attention_heads": heads,
        },
        projection_dim=text_width,
    )
    torch.manual_seed(0)
    theirs = transformers.CLIPModel(config).eval()
    ours = CLIPModel(CONVERTER.config_from_transformers(theirs.config.to_dict()))
    ours.load_state_dict(CONVERTER.state_from_transformers(theirs.state_dict()))  # strict
    return ContrastiveRow(
        "clip",
        "transformers CLIPModel (same weights)",
        ours.eval(),
        theirs,
        False,
        depth,
        width,
        vocab_size,
        image_size=image_size,
        patch_size=patch_size,
        text_layers=text_depth,
        text_embd=text_width,
        projection_dim=text_width,
    )


class Seq2SeqRow(Row):
    """An encoder-decoder: a source of ``length`` tokens and a target of ``length`` tokens
    (teacher forcing; the training step's labels are the target), and ``generate()`` from the
    source, greedy and with beam search. ``n_layer`` is each stack's depth."""

    decoder_start_token_id: int = 2

    def inputs(self, batch: int, length: int, device: torch.device) -> dict[str, object]:
        generator = torch.Generator().manual_seed(0)
        source = torch.randint(3, self.vocab_size, (batch, length), generator=generator)
        target = torch.randint(3, self.vocab_size, (batch, length), generator=generator)
        return {
            "input_ids": source.to(device),
            "attention_mask": torch.ones_like(source).to(device),
            "decoder_input_ids": target.to(device),
            "use_cache": False,
        }

    def training_inputs(self, inputs: dict[str, object]) -> dict[str, object]:
        return inputs | {"labels": inputs["decoder_input_ids"]}

    def items(self, batch: int, length: int) -> int:
        return 2 * batch * length  # source and target tokens

    def generation_config(self) -> GenerationConfig:
        start = self.decoder_start_token_id
        return GenerationConfig(pad_token_id=0, decoder_start_token_id=start, do_sample=False)

    def extra_generate_variants(self) -> dict[str, dict[str, object]]:
        return {"beam search, 3 beams": {"num_beams": 3}}

    def forward_flops(self, batch: int, length: int) -> float:
        """The encoder as a stack of :func:`causal_lm_flops` layers over the source (no head),
        the decoder as one over the target with the head, plus its cross attention: q and o
        over the target, k and v over the source, and QK^T and PV over target x source."""
        d, n_inner = self.n_embd, self.n_inner
        encoder = causal_lm_flops(self.n_layer, d, 0, batch, length, n_inner=n_inner)
        decoder = causal_lm_flops(self.n_layer, d, self.vocab_size, batch, length, n_inner=n_inner)
        cross = self.n_layer * batch * (2 * 2 * d * d * length * 2 + 4 * length * length * d)
        return encoder + decoder + cross


def encdec_row(size: dict[str, int]) -> Row:
    """Our EncDecForConditionalGeneration against transformers' BartForConditionalGeneration
    (``n_layer`` encoder and ``n_layer`` decoder layers), loaded from the directory BART's
    class saved, through our converter."""
    from scratchformers.encdec import EncDecForConditionalGeneration

    width = size["n_embd"]
    config = transformers.BartConfig(
        vocab_size=size["vocab_size"],
        d_model=width,
        encoder_layers=size["n_layer"],
        decoder_layers=size["n_layer"],
        encoder_attention_heads=size["n_head"],
        decoder_attention_heads=size["n_head"],
        encoder_ffn_dim=4 * width,
        decoder_ffn_dim=4 * width,
        max_position_embeddings=size["n_positions"],
        dropout=0.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=Seq2SeqRow.decoder_start_token_id,
        forced_eos_token_id=None,
    )
    torch.manual_seed(0)
    theirs = transformers.BartForConditionalGeneration(config).eval()
    with tempfile.TemporaryDirectory() as directory:
        theirs.save_pretrained(directory)
        ours = EncDecForConditionalGeneration.from_pretrained(directory)
    return Seq2SeqRow(
        "encdec",
        "transformers BartForConditionalGeneration (same weights)",
        ours.eval(),
        theirs,
        True,
        size["n_layer"],
        width,
        size["vocab_size"],
        n_inner=4 * width,
    )


ROWS: dict[str, Callable[[dict[str, int]], Row]] = {
    "gpt2": gpt2_row,
    "basicformer": basicformer_row,
    "basicformer-llama": basicformer_llama_row,
    "bert-mlm": bert_mlm_row,
    "vit": vit_row,
    "vitmae": vitmae_row,
    "lora": lora_row,
    "clip": clip_row,
    "encdec": encdec_row,
}
