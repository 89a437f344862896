"""scratchformers.encdec: the classic encoder-decoder transformer from scratch, which loads
transformers' BART and Marian (opus-mt) checkpoints and matches them.

Importing this package registers the classes with transformers' Auto classes.
"""

from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from scratchformers.core_attention.interop import export_to_transformers

from .configuration import EncDecConfig
from .modeling import (
    EncDecDecoder,
    EncDecEncoder,
    EncDecForConditionalGeneration,
    EncDecModel,
    EncDecPreTrainedModel,
)
from .translate import translate

AutoConfig.register(EncDecConfig.model_type, EncDecConfig, exist_ok=True)
AutoModel.register(EncDecConfig, EncDecModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(EncDecConfig, EncDecForConditionalGeneration, exist_ok=True)

__all__ = [
    "EncDecConfig",
    "EncDecDecoder",
    "EncDecEncoder",
    "EncDecForConditionalGeneration",
    "EncDecModel",
    "EncDecPreTrainedModel",
    "export_to_transformers",
    "translate",
]
