"""scratchformers.vitmae: the masked autoencoder (ViTMAE) from scratch on the vit package's
encoder, which loads transformers' ViTMAE checkpoints (the bare encoder and the pretraining
model) and matches them; its encoder fine-tunes as ``scratchformers.vit.
ViTForImageClassification.from_pretrained(mae_dir, num_labels=...)``.

Importing this package registers the classes with transformers' Auto classes.
"""

from transformers import AutoConfig, AutoModel, AutoModelForPreTraining

from scratchformers.core_attention.interop import export_to_transformers

from .configuration import ViTMAEConfig
from .modeling import (
    ViTMAEDecoder,
    ViTMAEEmbeddings,
    ViTMAEForPreTraining,
    ViTMAEForPreTrainingOutput,
    ViTMAEModel,
    ViTMAEModelOutput,
    ViTMAEPreTrainedModel,
    patchify,
    random_masking,
    sincos_position_table,
    unpatchify,
)

AutoConfig.register(ViTMAEConfig.model_type, ViTMAEConfig, exist_ok=True)
AutoModel.register(ViTMAEConfig, ViTMAEModel, exist_ok=True)
AutoModelForPreTraining.register(ViTMAEConfig, ViTMAEForPreTraining, exist_ok=True)

__all__ = [
    "ViTMAEConfig",
    "ViTMAEDecoder",
    "ViTMAEEmbeddings",
    "ViTMAEForPreTraining",
    "ViTMAEForPreTrainingOutput",
    "ViTMAEModel",
    "ViTMAEModelOutput",
    "ViTMAEPreTrainedModel",
    "export_to_transformers",
    "patchify",
    "random_masking",
    "sincos_position_table",
    "unpatchify",
]
