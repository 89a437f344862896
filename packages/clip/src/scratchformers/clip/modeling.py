"""CLIP, top to bottom: two towers, one shared embedding space.

* The vision tower is a ViT with a pre-LayerNorm: patches (the vit package's patch embedding,
  without a bias), a class embedding in front, learned positions, ``pre_layernorm``, the vit
  package's pre-norm layers, and ``post_layernorm`` on the class token's final state.
* The text tower is the same stack of layers run causally over token and learned position
  embeddings, a final LayerNorm, and the state at the first end-of-text token as the text's
  vector.
* Each vector is projected (no bias) into ``projection_dim`` and L2-normalised; the logits
  are the cosine similarities times ``exp(logit_scale)``, a learned temperature. The loss is
  the symmetric cross entropy over a batch: each image must pick its own caption among all
  the batch's captions, and each caption its own image.

Module names follow transformers' CLIP where the pieces are the same (``text_model``,
``vision_model``, ``embeddings.token_embedding``, ``embeddings.class_embedding``,
``embeddings.position_embedding``, ``final_layer_norm``, ``post_layernorm``,
``visual_projection``, ``text_projection``, ``logit_scale``) and the vit package's inside its
layers (``layers.<i>.layernorm_before``, ``.attention.q_proj``, ``.mlp.fc1``, ...); the
renames between the two are in ``convert.py``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.clip.modeling_clip import CLIPOutput as TransformersCLIPOutput
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from scratchformers.core_attention import (
    Attention,
    ConvertsCheckpoints,
    LearnedPositionalEmbedding,
    TokenEmbedding,
)
from scratchformers.vit import ViTEncoder, ViTLayer, ViTPatchEmbeddings

from .configuration import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from .convert import CONVERTER


def contrastive_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric loss for a ``(texts, images)`` similarity matrix whose diagonal holds
    the matching pairs: the mean of the text->image and image->text cross entropies."""
    targets = torch.arange(logits_per_text.shape[0], device=logits_per_text.device)
    return (
        F.cross_entropy(logits_per_text, targets) + F.cross_entropy(logits_per_text.T, targets)
    ) / 2


@dataclass
class CLIPOutput(TransformersCLIPOutput):
    """transformers' CLIP output (``loss``, ``logits_per_image``, ``logits_per_text``,
    ``text_embeds``, ``image_embeds``, the towers' outputs) and ``logit_scale``, the
    temperature the logits were multiplied by (``exp`` of the parameter): a loss over more
    than this batch (gathered across processes) needs it with the embeddings."""

    logit_scale: torch.Tensor | None = None


class CLIPVisionEmbeddings(nn.Module):
    """``pixel_values`` -> ``(batch, 1 + patches, hidden)``: the class embedding, then the
    patches in row order, with a learned position added to each (one table, class slot
    first, as CLIP stores it)."""

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.patch_embeddings = ViTPatchEmbeddings(config)
        self.class_embedding = nn.Parameter(torch.zeros(config.hidden_size))
        self.position_embedding = nn.Embedding(
            1 + self.patch_embeddings.num_patches, config.hidden_size
        )

    def forward(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False
    ) -> torch.Tensor:
        patches = self.patch_embeddings(pixel_values)
        cls = self.class_embedding.expand(patches.shape[0], 1, -1).to(patches.dtype)
        tokens = torch.cat([cls, patches], dim=1)
        table = self.patch_embeddings.position_table(
            self.position_embedding.weight[None],
            1,
            *pixel_values.shape[-2:],
            interpolate_pos_encoding,
        )
        return tokens + table


class CLIPTextEmbeddings(nn.Module):
    """``input_ids`` -> token embeddings plus learned positions ``0, 1, 2, ...`` (CLIP's texts
    are padded on the right, so positions simply count)."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.token_embedding = TokenEmbedding(config.vocab_size, config.hidden_size)
        self.position_embedding = LearnedPositionalEmbedding(
            config.max_position_embeddings, config.hidden_size
        )

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        embeddings = self.token_embedding(input_ids)
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        return embeddings + self.position_embedding(position_ids)


class CLIPPreTrainedModel(ConvertsCheckpoints, PreTrainedModel):
    """Shared by the CLIP classes: config, initialisation, backends, output recording."""

    config_class = CLIPConfig
    checkpoint_converters = (CONVERTER,)  # from_pretrained reads transformers' CLIP too
    base_model_prefix = "clip"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["CLIPTextEmbeddings", "CLIPVisionEmbeddings", "ViTLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_record_outputs = {"hidden_states": ViTLayer, "attentions": Attention}

    def _init_weights(self, module: nn.Module) -> None:
        """transformers' default for linear, embedding and norm layers (normal with the
        tower's ``initializer_range``, ones and zeros), and CLIP's for its own parameters: the
        class embedding, the image position table, the projections (scaled by the width) and
        the temperature.

        transformers initialises a model outside its own code module by module, skipping
        modules without parameters of their own: so each rule is stated on the module that
        holds the parameter."""
        super()._init_weights(module)
        config = self.config
        factor = config.initializer_factor
        if isinstance(module, CLIPVisionEmbeddings):
            init.normal_(module.class_embedding, std=config.hidden_size**-0.5 * factor)
            init.normal_(module.position_embedding.weight, std=config.initializer_range * factor)
        elif isinstance(module, CLIPModel):
            text_width = config.text_config.hidden_size
            vision_width = config.vision_config.hidden_size
            init.normal_(module.text_projection.weight, std=text_width**-0.5 * factor)
            init.normal_(module.visual_projection.weight, std=vision_width**-0.5 * factor)
            init.constant_(module.logit_scale, config.logit_scale_init_value)


class CLIPTextTransformer(CLIPPreTrainedModel):
    """The text tower: embeddings, causal pre-norm layers, the final LayerNorm.

    ``pooler_output`` is the final state at each text's first ``eos_token_id`` (for a legacy
    config with ``eos_token_id == 2``, at its highest token id), before the projection.
    """

    config_class = CLIPTextConfig
    input_modalities = ("text",)

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__(config)
        config.check()
        self.embeddings = CLIPTextEmbeddings(config)
        self.layers = ViTEncoder(config, causal=True)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.token_embedding

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.token_embedding = value

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)  # hidden_states[-1] is before the norm
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs: object,
    ) -> BaseModelOutputWithPooling:
        """``input_ids`` ``(batch, length)``, padded on the right, each text ending in an
        end-of-text token; ``attention_mask`` 1 for tokens, 0 for padding."""
        if input_ids is None:
            raise ValueError("input_ids is required: (batch, length) token ids")
        hidden_states = self.embeddings(input_ids, position_ids)
        hidden_states = self.layers(hidden_states, attention_mask, **kwargs)
        hidden_states = self.final_layer_norm(hidden_states)
        rows = torch.arange(hidden_states.shape[0], device=hidden_states.device)
        pooled = hidden_states[rows, self.end_of_text_positions(input_ids)]
        return BaseModelOutputWithPooling(last_hidden_state=hidden_states, pooler_output=pooled)

    def end_of_text_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``(batch,)``: where each text is read (see the class docstring)."""
        eos = self.config.eos_token_id
        if eos == 2:  # transformers' rule for configs written before the field was right
            return input_ids.to(torch.int).argmax(dim=-1)
        is_eos = input_ids == eos
        if not torch.compiler.is_compiling() and not bool(is_eos.any(dim=-1).all()):
            missing = (~is_eos.any(dim=-1)).nonzero().flatten().tolist()
            raise ValueError(
                f"input_ids rows {missing} hold no end-of-text token (eos_token_id={eos}), "
                "where CLIP reads a text's embedding; tokenize with the model's tokenizer, "
                "which adds it (and keeps it when truncating)"
            )
        return is_eos.to(torch.int).argmax(dim=-1)


class CLIPVisionTransformer(CLIPPreTrainedModel):
    """The vision tower: embeddings, ``pre_layernorm``, pre-norm layers; ``pooler_output``
    is ``post_layernorm`` of the class token's final state, before the projection."""

    config_class = CLIPVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__(config)
        config.check()
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layers = ViTEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> ViTPatchEmbeddings:
        return self.embeddings.patch_embeddings

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = False,
        **kwargs: object,
    ) -> BaseModelOutputWithPooling:
        """``pixel_values`` ``(batch, channels, height, width)``, normalised as CLIP's image
        processor does."""
        hidden_states = self.embeddings(pixel_values, bool(interpolate_pos_encoding))
        hidden_states = self.pre_layernorm(hidden_states)
        hidden_states = self.layers(hidden_states, **kwargs)
        pooled = self.post_layernorm(hidden_states[:, 0])
        return BaseModelOutputWithPooling(last_hidden_state=hidden_states, pooler_output=pooled)


class CLIPModel(CLIPPreTrainedModel):
    """Both towers, their projections into ``projection_dim`` and the learned temperature.

    ``forward`` takes texts and images and returns ``logits_per_image`` ``(images, texts)``
    and ``logits_per_text`` (its transpose), the normalised ``image_embeds`` and
    ``text_embeds``, and with ``return_loss=True`` CLIP's symmetric contrastive loss, which
    takes the i-th text and the i-th image as a pair.
    """

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__(config)
        config.check()
        self.text_model = CLIPTextTransformer._from_config(config.text_config)
        self.vision_model = CLIPVisionTransformer._from_config(config.vision_config)
        self.text_projection = nn.Linear(
            config.text_config.hidden_size, config.projection_dim, bias=False
        )
        self.visual_projection = nn.Linear(
            config.vision_config.hidden_size, config.projection_dim, bias=False
        )
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        self.post_init()

    @classmethod
    def from_openai(
        cls,
        path_or_state_dict: str | os.PathLike[str] | Mapping[str, torch.Tensor],
        *,
        hidden_act: str = "quick_gelu",
        text_config: Mapping[str, Any] | None = None,
        vision_config: Mapping[str, Any] | None = None,
        **changes: Any,
    ) -> CLIPModel:
        """A CLIP holding weights in OpenAI's layout, which the original CLIP code and
        open_clip use (``visual.conv1.weight``, ``transformer.resblocks.<i>.attn.
        in_proj_weight``, ``text_projection``, ...).

        Args:
            path_or_state_dict: a state dict, or a file: ``.safetensors``, or a plain state
                dict that ``torch.load(..., weights_only=True)`` reads (never an unrestricted
                unpickle; OpenAI's TorchScript ``.pt`` archives are refused with the way to
                read them).
            hidden_act: ``"quick_gelu"`` for OpenAI's weights, ``"gelu"`` for LAION's
                open_clip weights (the file cannot tell).
            text_config, vision_config: fields that override what the tensors' shapes say
                (heads are inferred as ``width // 64``, OpenAI's rule; give
                ``{"num_attention_heads": ...}`` for a model that breaks it).
            **changes: top-level config fields.

        The model is returned in eval mode, in the checkpoint's dtype.
        """
        from .openai_checkpoints import from_openai

        return from_openai(
            path_or_state_dict,
            hidden_act=hidden_act,
            text_config=text_config,
            vision_config=vision_config,
            **changes,
        )

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.text_model.set_input_embeddings(value)

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs: object,
    ) -> BaseModelOutputWithPooling:
        """The text tower's outputs with ``pooler_output`` projected into the shared space
        (not normalised), as transformers 5's ``get_text_features`` returns them."""
        outputs = self.text_model(
            input_ids, attention_mask, position_ids, return_dict=True, **kwargs
        )
        outputs.pooler_output = self.text_projection(outputs.pooler_output)
        return outputs

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool = False,
        **kwargs: object,
    ) -> BaseModelOutputWithPooling:
        """The vision tower's outputs with ``pooler_output`` projected into the shared space
        (not normalised), as transformers 5's ``get_image_features`` returns them."""
        outputs = self.vision_model(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            return_dict=True,
            **kwargs,
        )
        outputs.pooler_output = self.visual_projection(outputs.pooler_output)
        return outputs

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        return_loss: bool | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: object,
    ) -> CLIPOutput:
        """The arguments are transformers' ``CLIPModel``'s, in its order."""
        vision_outputs = self.get_image_features(pixel_values, interpolate_pos_encoding, **kwargs)
        text_outputs = self.get_text_features(input_ids, attention_mask, position_ids, **kwargs)
        image_embeds = F.normalize(vision_outputs.pooler_output, dim=-1)
        text_embeds = F.normalize(text_outputs.pooler_output, dim=-1)
        logit_scale = self.logit_scale.exp()
        logits_per_text = logit_scale * text_embeds @ image_embeds.T
        loss = None
        if return_loss:
            if len(text_embeds) != len(image_embeds):
                raise ValueError(
                    f"return_loss pairs the i-th text with the i-th image, but got "
                    f"{len(image_embeds)} images and {len(text_embeds)} texts"
                )
            loss = contrastive_loss(logits_per_text)
        return CLIPOutput(
            loss=loss,
            logits_per_image=logits_per_text.T,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
            logit_scale=logit_scale,
        )
