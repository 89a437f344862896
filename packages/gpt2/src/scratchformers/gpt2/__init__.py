"""scratchformers.gpt2: GPT-2 from scratch that loads transformers' GPT-2 checkpoints and matches them.

Importing this package registers the classes with transformers' Auto classes.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from scratchformers.core_attention.interop import export_to_transformers

from .configuration import GPT2Config
from .modeling import GPT2LMHeadModel, GPT2Model, GPT2PreTrainedModel

AutoConfig.register(GPT2Config.model_type, GPT2Config, exist_ok=True)
AutoModel.register(GPT2Config, GPT2Model, exist_ok=True)
AutoModelForCausalLM.register(GPT2Config, GPT2LMHeadModel, exist_ok=True)

__all__ = [
    "GPT2Config",
    "GPT2LMHeadModel",
    "GPT2Model",
    "GPT2PreTrainedModel",
    "export_to_transformers",
]
