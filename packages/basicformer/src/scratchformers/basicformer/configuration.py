"""BasicFormerConfig: one config for the encoder, decoder and encoder-decoder BasicFormer."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

from scratchformers.core_attention import check_config

POSITION_EMBEDDING_TYPES = ("none", "learned", "sinusoidal", "rotary")
NORM_POSITIONS = ("pre", "post")
NORM_TYPES = ("layernorm", "rmsnorm")
MLP_TYPES = ("plain", "gated")


@strict
class BasicFormerConfig(PreTrainedConfig):
    r"""Configuration of a BasicFormer: a plain transformer that is an encoder, a decoder, or both.

    The mode (the original BasicFormer's flags):

    * ``is_encoder_decoder=True``: an encoder and a decoder with cross attention (seq2seq);
    * ``is_decoder=True``: a causal decoder (decoder-only); with ``add_cross_attention=True`` it
      also attends to ``encoder_hidden_states`` that you pass in;
    * neither: a bidirectional encoder (masked LM).

    The task classes set the mode they need, so ``BasicFormerForCausalLM(BasicFormerConfig())``
    is a decoder and ``BasicFormerForSeq2SeqLM(BasicFormerConfig())`` an encoder-decoder.

    Args:
        vocab_size: tokens in the vocabulary (shared by encoder, decoder and the LM head).
        hidden_size: width of the residual stream.
        num_hidden_layers: layers in each stack (the encoder and the decoder each get this many).
        num_attention_heads: query heads per attention layer.
        num_key_value_heads: key/value heads (grouped-query attention); ``None`` = all heads.
        head_dim: width of one head; ``None`` = ``hidden_size // num_attention_heads``.
        intermediate_size: width of the MLP; ``None`` = ``4 * hidden_size``.
        hidden_act: the MLP activation, any name in ``transformers.activations.ACT2FN``.
        mlp_type: ``"plain"`` (``down_proj(act(up_proj(x)))``, GPT-2/BERT style) or ``"gated"``
            (``down_proj(act(gate_proj(x)) * up_proj(x))``, Llama's SwiGLU with ``"silu"``).
        max_position_embeddings: longest sequence (a hard limit for learned positions).
        position_embedding_type: ``"none"``, ``"learned"``, ``"sinusoidal"`` or ``"rotary"``.
        rope_theta: the rotary base.
        norm_position: ``"pre"`` (normalise the input of each sub-layer, GPT-2 style, with a
            final norm) or ``"post"`` (normalise after each residual addition, as in the
            original Transformer and BERT).
        norm_type: ``"layernorm"`` (``nn.LayerNorm``, weight and bias) or ``"rmsnorm"``
            (``nn.RMSNorm``, weight only, as in Llama) for every norm of the model.
        layer_norm_eps: the norms' epsilon (Llama's ``rms_norm_eps`` with ``"rmsnorm"``).
        dropout: dropout on embeddings and sub-layer outputs.
        attention_dropout: dropout on attention probabilities.
        attention_bias: biases on the q/k/v/o projections.
        mlp_bias: biases in the MLP.
        initializer_range: std of the normal initialisation.
        tie_word_embeddings: the LM head reuses the token embedding (stored once on disk).
        is_decoder: causal decoder (decoder-only mode).
        add_cross_attention: decoder layers get cross attention over ``encoder_hidden_states``.
        is_encoder_decoder: encoder plus decoder (seq2seq mode).
        use_cache: return a KV cache from decoder forwards.
        pad_token_id, bos_token_id, eos_token_id: special tokens.
        decoder_start_token_id: first decoder token in seq2seq; ``None`` = ``bos_token_id``.
    """

    model_type = "scratchformers-basicformer"
    keys_to_ignore_at_inference = ["cache"]

    vocab_size: int = 1000
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    intermediate_size: int | None = None
    hidden_act: str = "gelu"
    mlp_type: str = "plain"
    max_position_embeddings: int = 512
    position_embedding_type: str = "learned"
    rope_theta: float | int = 10000.0
    norm_position: str = "pre"
    norm_type: str = "layernorm"
    layer_norm_eps: float | int = 1e-5
    dropout: float | int = 0.0
    attention_dropout: float | int = 0.0
    attention_bias: bool = True
    mlp_bias: bool = True
    initializer_range: float | int = 0.02
    tie_word_embeddings: bool = True
    is_decoder: bool = False
    add_cross_attention: bool = False
    is_encoder_decoder: bool = False
    use_cache: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    decoder_start_token_id: int | None = None

    def __post_init__(self, **kwargs: object) -> None:
        self.check()
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        if self.decoder_start_token_id is None:
            self.decoder_start_token_id = self.bos_token_id
        super().__post_init__(**kwargs)

    def check(self) -> None:
        """Raise a ``ValueError`` naming the field if the config cannot build a model."""
        check_config(self)
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ValueError(
                f"position_embedding_type={self.position_embedding_type!r} is not one of "
                f"{POSITION_EMBEDDING_TYPES}"
            )
        head_dim = self.head_dim or self.hidden_size // self.num_attention_heads
        if self.position_embedding_type == "rotary" and head_dim % 2:
            raise ValueError(f"rotary positions need an even head_dim, got head_dim={head_dim}")
        if self.norm_position not in NORM_POSITIONS:
            raise ValueError(f"norm_position={self.norm_position!r} is not one of {NORM_POSITIONS}")
        if self.norm_type not in NORM_TYPES:
            raise ValueError(f"norm_type={self.norm_type!r} is not one of {NORM_TYPES}")
        if self.mlp_type not in MLP_TYPES:
            raise ValueError(f"mlp_type={self.mlp_type!r} is not one of {MLP_TYPES}")
        if self.hidden_act not in ACT2FN:
            raise ValueError(
                f"hidden_act={self.hidden_act!r} is not a known activation; "
                f"choose one of {sorted(ACT2FN)}"
            )
        if self.is_decoder and self.is_encoder_decoder:
            raise ValueError(
                "is_decoder=True (decoder-only) contradicts is_encoder_decoder=True "
                "(encoder plus decoder); set one of them"
            )
        if self.add_cross_attention and not self.is_decoder:
            raise ValueError(
                "add_cross_attention=True needs is_decoder=True: only a decoder attends to an "
                "encoder (an encoder-decoder model has cross attention already)"
            )
