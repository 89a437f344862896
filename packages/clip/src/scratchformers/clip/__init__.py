"""scratchformers.clip: CLIP from scratch on the vit package's layers, which loads
transformers' CLIP checkpoints and OpenAI's / open_clip's weights, matches both, and
classifies images zero-shot.

Importing this package registers the classes with transformers' Auto classes.
"""

from transformers import AutoConfig, AutoModel, AutoModelForZeroShotImageClassification

from scratchformers.core_attention.interop import export_to_transformers

from .configuration import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from .modeling import (
    CLIPModel,
    CLIPOutput,
    CLIPPreTrainedModel,
    CLIPTextEmbeddings,
    CLIPTextTransformer,
    CLIPVisionEmbeddings,
    CLIPVisionTransformer,
    contrastive_loss,
)
from .openai_checkpoints import export_to_open_clip, export_to_openai, open_clip_model_config
from .tokenizer import train_caption_tokenizer
from .zero_shot import zero_shot_classify

for _config in (CLIPConfig, CLIPTextConfig, CLIPVisionConfig):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
AutoModel.register(CLIPConfig, CLIPModel, exist_ok=True)
AutoModelForZeroShotImageClassification.register(CLIPConfig, CLIPModel, exist_ok=True)

__all__ = [
    "CLIPConfig",
    "CLIPModel",
    "CLIPOutput",
    "CLIPPreTrainedModel",
    "CLIPTextConfig",
    "CLIPTextEmbeddings",
    "CLIPTextTransformer",
    "CLIPVisionConfig",
    "CLIPVisionEmbeddings",
    "CLIPVisionTransformer",
    "contrastive_loss",
    "export_to_open_clip",
    "export_to_openai",
    "export_to_transformers",
    "open_clip_model_config",
    "train_caption_tokenizer",
    "zero_shot_classify",
]
