"""GPT2Config: transformers' GPT-2 configuration, field for field, under our model type."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import GPT2Config as TransformersGPT2Config

from scratchformers.core_attention import check_config

UNSUPPORTED = {"add_cross_attention": "GPT-2 with cross attention (use scratchformers-encdec)"}


@strict
class GPT2Config(TransformersGPT2Config):
    """The configuration of :class:`~scratchformers.gpt2.GPT2LMHeadModel`.

    It *is* transformers' ``GPT2Config`` (same fields: ``n_embd``, ``n_layer``, ``n_head``,
    ``n_positions``, ``n_inner``, ``activation_function``, ``layer_norm_epsilon``,
    ``scale_attn_weights``, ``scale_attn_by_inverse_layer_idx``, ``reorder_and_upcast_attn``,
    the dropouts, and the standard aliases ``hidden_size``, ``num_hidden_layers``,
    ``num_attention_heads``, ``max_position_embeddings``), so a transformers GPT-2
    ``config.json`` reads as is; only ``model_type`` differs, which routes the Auto classes to
    our models.
    """

    model_type = "scratchformers-gpt2"

    def __post_init__(self, **kwargs: object) -> None:
        super().__post_init__(**kwargs)
        self.check()

    def check(self) -> None:
        """Raise a ``ValueError`` naming the field for a config this GPT-2 cannot honour."""
        check_config(self)
        # GPT-2's own name for the MLP width; None means 4 * n_embd.
        if self.n_inner is not None and self.n_inner < 1:
            raise ValueError(
                f"n_inner must be at least 1 (or None for 4 * n_embd), got {self.n_inner}"
            )
        for field, what in UNSUPPORTED.items():
            if getattr(self, field, False):
                raise ValueError(f"{field}=True is not supported: {what}")
