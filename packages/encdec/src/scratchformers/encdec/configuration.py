"""EncDecConfig: the classic encoder-decoder, in BART's field names plus a few architecture options."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

from scratchformers.core_attention import check_config

POSITION_EMBEDDING_TYPES = ("learned", "sinusoidal")
NORM_POSITIONS = ("post", "pre")


@strict
class EncDecConfig(PreTrainedConfig):
    r"""Configuration of :class:`~scratchformers.encdec.EncDecForConditionalGeneration`.

    The fields are BART's (``transformers.BartConfig``), so a BART or Marian ``config.json``
    reads field for field; four options of our own choose the architecture. The defaults are a
    small BART-shaped model trained from scratch.

    ===============================  ===========  ==============  =========================
    option                           BART         Marian/opus-mt  from scratch (default)
    ===============================  ===========  ==============  =========================
    ``position_embedding_type``      ``learned``  ``sinusoidal``  ``learned``
    ``position_offset``              2            (unused)        2
    ``layernorm_embedding``          True         False           True
    ``norm_position``                ``post``     ``post``        ``post`` (or ``pre``)
    ``scale_embedding``              False        True            False
    ``activation_function``          ``gelu``     ``swish``       ``gelu``
    ===============================  ===========  ==============  =========================

    Args:
        vocab_size: tokens in the one vocabulary that the encoder, the decoder and the output
            layer share.
        d_model: width of the residual stream (alias ``hidden_size``).
        encoder_layers, decoder_layers: layers in each stack.
        encoder_attention_heads, decoder_attention_heads: heads per attention layer (the
            decoder's cross attention has the decoder's count).
        encoder_ffn_dim, decoder_ffn_dim: width of each stack's feed-forward block.
        max_position_embeddings: the longest source and the longest target, in tokens (the size
            of the learned table; for sinusoidal positions, the limit Marian's table sets).
        dropout: on embeddings and on the output of every sub-layer.
        attention_dropout: on the attention probabilities.
        activation_dropout: inside the feed-forward block, after the activation.
        activation_function: the feed-forward activation, any name of
            ``transformers.activations.ACT2FN`` (``"gelu"``, ``"swish"``, ``"relu"``, ...).
        init_std: standard deviation of the normal initialisation.
        scale_embedding: multiply token embeddings by ``sqrt(d_model)`` (Marian, the original
            Transformer).
        position_embedding_type: ``"learned"`` (one trained vector per position, BART) or
            ``"sinusoidal"`` (fixed sines then cosines, Marian's layout; no weights).
        position_offset: rows of the learned table before position 0: BART's tables hold
            ``max_position_embeddings + 2`` rows and read position ``p`` at row ``p + 2`` (a
            fairseq leftover). Kept at 2 by default so that a model trained here exports to
            BART unchanged.
        layernorm_embedding: a LayerNorm on token plus position embeddings, before the first
            layer of each stack (BART).
        norm_position: ``"post"`` (normalise after each residual addition: BART, Marian, the
            original Transformer) or ``"pre"`` (normalise each sub-layer's input, with a final
            LayerNorm at the end of each stack: trains more easily when deep).
        pad_token_id, bos_token_id, eos_token_id: the special tokens. Padding rows of the
            source are masked out by ``attention_mask``.
        decoder_start_token_id: the first decoder input (BART: eos; Marian: pad).
        forced_eos_token_id: the token ``generate()`` forces at ``max_length``.
        tie_word_embeddings: the output layer is the token embedding (stored once).
        use_cache: return the decoder's KV cache.
    """

    model_type = "scratchformers-encdec"
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "encoder_attention_heads",
        "num_hidden_layers": "encoder_layers",
    }

    vocab_size: int = 8000
    d_model: int = 256
    encoder_layers: int = 3
    decoder_layers: int = 3
    encoder_attention_heads: int = 4
    decoder_attention_heads: int = 4
    encoder_ffn_dim: int = 1024
    decoder_ffn_dim: int = 1024
    max_position_embeddings: int = 256
    dropout: float | int = 0.1
    attention_dropout: float | int = 0.0
    activation_dropout: float | int = 0.0
    activation_function: str = "gelu"
    init_std: float = 0.02
    scale_embedding: bool = False
    position_embedding_type: str = "learned"
    position_offset: int = 2
    layernorm_embedding: bool = True
    norm_position: str = "post"
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 2
    decoder_start_token_id: int | None = 2
    forced_eos_token_id: int | list[int] | None = 2
    is_encoder_decoder: bool = True
    tie_word_embeddings: bool = True
    use_cache: bool = True

    def __post_init__(self, **kwargs: object) -> None:
        super().__post_init__(**kwargs)
        self.check()

    def check(self) -> None:
        """Raise a ``ValueError`` naming the field for a config that cannot build a model."""
        check_config(self)  # d_model, encoder heads and layers (as hidden_size, ...), dropouts
        for name in (
            "decoder_layers",
            "decoder_attention_heads",
            "encoder_ffn_dim",
            "decoder_ffn_dim",
        ):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        for heads in ("encoder_attention_heads", "decoder_attention_heads"):
            if self.d_model % getattr(self, heads):
                raise ValueError(
                    f"d_model={self.d_model} is not divisible by {heads}={getattr(self, heads)}"
                )
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ValueError(
                f"position_embedding_type must be one of {POSITION_EMBEDDING_TYPES}, "
                f"got {self.position_embedding_type!r}"
            )
        if self.norm_position not in NORM_POSITIONS:
            raise ValueError(
                f"norm_position must be one of {NORM_POSITIONS}, got {self.norm_position!r}"
            )
        if self.position_offset < 0:
            raise ValueError(f"position_offset must be at least 0, got {self.position_offset}")
        if self.activation_function not in ACT2FN:
            raise ValueError(
                f"activation_function {self.activation_function!r} is unknown; "
                f"choose one of {sorted(ACT2FN)}"
            )
        if not self.is_encoder_decoder:
            raise ValueError("is_encoder_decoder must be True: this model is an encoder-decoder")
