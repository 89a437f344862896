"""scratchformers.basicformer: one readable transformer that is an encoder, a decoder, or both.

Importing this package registers the BasicFormer classes with transformers' Auto classes.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
)

from .configuration import BasicFormerConfig
from .modeling import (
    BasicFormerForCausalLM,
    BasicFormerForMaskedLM,
    BasicFormerForSeq2SeqLM,
    BasicFormerModel,
    BasicFormerPreTrainedModel,
)

AutoConfig.register(BasicFormerConfig.model_type, BasicFormerConfig, exist_ok=True)
AutoModel.register(BasicFormerConfig, BasicFormerModel, exist_ok=True)
AutoModelForMaskedLM.register(BasicFormerConfig, BasicFormerForMaskedLM, exist_ok=True)
AutoModelForCausalLM.register(BasicFormerConfig, BasicFormerForCausalLM, exist_ok=True)
AutoModelForSeq2SeqLM.register(BasicFormerConfig, BasicFormerForSeq2SeqLM, exist_ok=True)

__all__ = [
    "BasicFormerConfig",
    "BasicFormerForCausalLM",
    "BasicFormerForMaskedLM",
    "BasicFormerForSeq2SeqLM",
    "BasicFormerModel",
    "BasicFormerPreTrainedModel",
]
