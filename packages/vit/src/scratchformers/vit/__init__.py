"""scratchformers.vit: the Vision Transformer from scratch, which loads transformers' ViT
checkpoints (the bare model, with or without its pooler, and the image classifier) and timm's
``VisionTransformer`` weights, matches both, and writes its classifier back for either.

Importing this package registers the classes with transformers' Auto classes.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from scratchformers.core_attention.interop import export_to_transformers

from .configuration import ViTConfig
from .modeling import (
    ViTEmbeddings,
    ViTEncoder,
    ViTForImageClassification,
    ViTLayer,
    ViTMLP,
    ViTModel,
    ViTPatchEmbeddings,
    ViTPooler,
    ViTPreTrainedModel,
    resize_position_grid,
)
from .resize import with_image_size
from .timm_checkpoints import export_to_timm, from_timm, options_from_timm_config

AutoConfig.register(ViTConfig.model_type, ViTConfig, exist_ok=True)
AutoModel.register(ViTConfig, ViTModel, exist_ok=True)
AutoModelForImageClassification.register(ViTConfig, ViTForImageClassification, exist_ok=True)

__all__ = [
    "ViTConfig",
    "ViTEmbeddings",
    "ViTEncoder",
    "ViTForImageClassification",
    "ViTLayer",
    "ViTMLP",
    "ViTModel",
    "ViTPatchEmbeddings",
    "ViTPooler",
    "ViTPreTrainedModel",
    "export_to_timm",
    "export_to_transformers",
    "from_timm",
    "options_from_timm_config",
    "resize_position_grid",
    "with_image_size",
]
