"""ViTConfig: transformers' ViT configuration, field for field, plus the few options its ViT
does not have (pooling, no class token, where the final norm goes, a bias-free patch
projection), under our model type."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import ViTConfig as TransformersViTConfig
from transformers.activations import ACT2FN

from scratchformers.core_attention import check_config

POOLINGS = ("cls", "mean")
FINAL_NORM_POSITIONS = ("before_pooling", "after_pooling")
# Probabilities whose names end in "prob", which check_config does not recognise.
PROBABILITY_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob")


def as_pair(value: int | list[int] | tuple[int, ...]) -> tuple[int, int]:
    """``(height, width)`` from an ``image_size`` or ``patch_size`` field: an int is square; a
    config.json stores a pair as a list."""
    if isinstance(value, int):
        return value, value
    return int(value[0]), int(value[1])


@strict
class ViTConfig(TransformersViTConfig):
    """The configuration of :class:`~scratchformers.vit.ViTModel` and its classifier.

    It *is* transformers' ``ViTConfig`` (``image_size``, ``patch_size``, ``num_channels``,
    ``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``, ``intermediate_size``,
    ``hidden_act``, ``layer_norm_eps``, ``qkv_bias``, ``hidden_dropout_prob``,
    ``attention_probs_dropout_prob``, ``pooler_output_size``, ``pooler_act``, ``num_labels``,
    ``id2label``, ``problem_type``, ...), so a transformers ViT ``config.json`` reads as is and
    means what it means there. The defaults of the fields below are transformers' layout;
    the other values describe timm's variants (``from_timm`` sets them from the weights):

    Attributes:
        use_class_token: prepend a learned class token (with its own position). Without one
            the sequence is the patches alone and ``pooling`` must be ``"mean"``.
        pooling: what the classifier (and the pooler) reads: ``"cls"``, the class token's
            final state (transformers and the paper), or ``"mean"``, the mean over the patch
            tokens (timm's ``global_pool="avg"``).
        final_norm_position: ``"before_pooling"`` normalises every token of the last hidden
            state (transformers' ``layernorm``, timm's ``norm``); ``"after_pooling"``
            normalises only the pooled vector and leaves the last hidden state as the last
            layer wrote it (timm's ``fc_norm``).
        patch_bias: a bias on the patch projection (CLIP's vision tower has none).
    """

    model_type = "scratchformers-vit"

    use_class_token: bool = True
    pooling: str = "cls"
    final_norm_position: str = "before_pooling"
    patch_bias: bool = True

    def __post_init__(self, **kwargs: object) -> None:
        super().__post_init__(**kwargs)
        self.check()

    def check(self) -> None:
        """Raise a ``ValueError`` naming the field for a config this ViT cannot honour."""
        check_config(self)
        image_size, patch_size = self.image_size, self.patch_size
        for name, value in (("image_size", image_size), ("patch_size", patch_size)):
            if isinstance(value, bool) or min(as_pair(value)) < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if any(p > i for p, i in zip(as_pair(patch_size), as_pair(image_size), strict=True)):
            raise ValueError(
                f"patch_size={patch_size} is larger than image_size={image_size}: an image must "
                "hold at least one patch"
            )
        if self.num_channels < 1:
            raise ValueError(f"num_channels must be at least 1, got {self.num_channels}")
        if self.pooler_output_size < 1:
            raise ValueError(
                f"pooler_output_size must be at least 1, got {self.pooler_output_size}"
            )
        for name in PROBABILITY_FIELDS:
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        for name in ("hidden_act", "pooler_act"):
            if getattr(self, name) not in ACT2FN:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} is not an activation transformers knows"
                )
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.pooling == "cls" and not self.use_class_token:
            raise ValueError(
                "pooling='cls' reads the class token, but use_class_token=False builds none; "
                "use pooling='mean'"
            )
        if self.final_norm_position not in FINAL_NORM_POSITIONS:
            raise ValueError(
                f"final_norm_position must be one of {FINAL_NORM_POSITIONS}, "
                f"got {self.final_norm_position!r}"
            )
