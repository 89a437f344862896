"""ViTMAEConfig: transformers' ViTMAE configuration, field for field, under our model type,
with the checks that a masked autoencoder needs before any weight exists."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import ViTMAEConfig as TransformersViTMAEConfig
from transformers.activations import ACT2FN

from scratchformers.core_attention import check_config
from scratchformers.vit.configuration import as_pair

# Probabilities whose names end in "prob", which check_config does not recognise.
PROBABILITY_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob")
# The decoder's sizes, which check_config does not know under these names.
DECODER_SIZE_FIELDS = (
    "decoder_hidden_size",
    "decoder_num_hidden_layers",
    "decoder_num_attention_heads",
    "decoder_intermediate_size",
)


@strict
class ViTMAEConfig(TransformersViTMAEConfig):
    """The configuration of :class:`~scratchformers.vitmae.ViTMAEModel` and
    :class:`~scratchformers.vitmae.ViTMAEForPreTraining`.

    It *is* transformers' ``ViTMAEConfig``, so a transformers ViTMAE ``config.json`` reads as is
    and means what it means there: the encoder's ``image_size``, ``patch_size``,
    ``num_channels``, ``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``,
    ``intermediate_size``, ``hidden_act``, ``layer_norm_eps``, ``qkv_bias`` and dropouts (a
    ViT's, read by the vit package's layers); the lightweight decoder's own
    ``decoder_hidden_size``, ``decoder_num_hidden_layers``, ``decoder_num_attention_heads`` and
    ``decoder_intermediate_size`` (its norm epsilon, activation, biases and dropouts are the
    encoder's); ``mask_ratio``, the share of the patches hidden from the encoder, and
    ``norm_pix_loss``, whether each target patch is normalised by its own mean and variance.
    """

    model_type = "scratchformers-vitmae"
    # The vit package's embeddings read this: a masked autoencoder always has a class token.
    use_class_token = True

    def __post_init__(self, **kwargs: object) -> None:
        super().__post_init__(**kwargs)
        self.check()

    def check(self) -> None:
        """Raise a ``ValueError`` naming the field for a config this model cannot honour."""
        check_config(self)
        for name in ("image_size", "patch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or min(as_pair(value)) < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if not isinstance(self.patch_size, int):
            raise ValueError(
                f"patch_size must be one int (square patches: the decoder predicts "
                f"patch_size**2 * num_channels pixels per patch), got {self.patch_size}"
            )
        height, width = as_pair(self.image_size)
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} is not a whole number of patches of "
                f"patch_size={self.patch_size}: the loss reconstructs every pixel"
            )
        if self.num_channels < 1:
            raise ValueError(f"num_channels must be at least 1, got {self.num_channels}")
        for name in PROBABILITY_FIELDS:
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if self.hidden_act not in ACT2FN:
            raise ValueError(
                f"hidden_act={self.hidden_act!r} is not an activation transformers knows"
            )
        for name in DECODER_SIZE_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.decoder_hidden_size % self.decoder_num_attention_heads:
            raise ValueError(
                f"decoder_hidden_size={self.decoder_hidden_size} is not divisible by "
                f"decoder_num_attention_heads={self.decoder_num_attention_heads}; change one of them"
            )
        for name in ("hidden_size", "decoder_hidden_size"):
            if getattr(self, name) % 4:
                raise ValueError(
                    f"{name}={getattr(self, name)} is not a multiple of 4: the fixed 2D sin-cos "
                    "positions give each axis a sine and a cosine half"
                )
        ratio = self.mask_ratio
        if isinstance(ratio, bool) or not 0.0 <= ratio < 1.0:
            raise ValueError(
                f"mask_ratio must be in [0, 1) (the share of the patches hidden from the "
                f"encoder), got {ratio}"
            )
