"""The Vision Transformer, top to bottom: the patch embedding, the class token and position
table, the pre-norm encoder layer and its stack, the pooler, the bare model and the image
classifier.

Module names are those of transformers' ViT as it holds them in memory (``vit.embeddings.
patch_embeddings.projection``, ``vit.embeddings.cls_token``, ``vit.embeddings.
position_embeddings``, ``vit.layers.<i>.layernorm_before``, ``.attention.q_proj``,
``.layernorm_after``, ``.mlp.fc1``, ``vit.layernorm``, ``vit.pooler.dense``, ``classifier``),
so that its checkpoints map onto ours by the renames its own loader applies (``convert.py``),
and peft target names read the same. Attention is the shared core's ``Attention``, and the
stack's mask comes from ``prepare_attention_inputs``.

The pieces other packages build on (vitmae, clip) are public: :class:`ViTPatchEmbeddings`,
:class:`ViTEmbeddings` (whose position table has a class slot and can be added to any subset
of the patches), :class:`ViTLayer` and :class:`ViTEncoder`, which read only standard config
fields.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from scratchformers.core_attention import (
    Attention,
    ConvertsCheckpoints,
    activation,
    check_classification_labels,
    prepare_attention_inputs,
)

from .configuration import ViTConfig, as_pair
from .convert import CONVERTER, MAE_ENCODER_CONVERTERS


class ViTPatchEmbeddings(nn.Module):
    """``pixel_values`` ``(batch, channels, height, width)`` -> one vector per patch
    ``(batch, patches, hidden_size)``: a convolution whose kernel and stride are the patch
    size, so each output is a linear map of one patch's pixels. Patches are numbered row by
    row; pixels past the last whole patch are dropped, as the convolution drops them.

    Reads ``image_size``, ``patch_size``, ``num_channels``, ``hidden_size`` and (default
    ``True``) ``patch_bias`` from the config.
    """

    def __init__(self, config: PreTrainedConfig) -> None:
        super().__init__()
        self.image_size = as_pair(config.image_size)
        self.patch_size = as_pair(config.patch_size)
        self.num_channels = config.num_channels
        self.grid_size = self.grid_for(*self.image_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.projection = nn.Conv2d(
            config.num_channels,
            config.hidden_size,
            kernel_size=self.patch_size,
            stride=self.patch_size,
            bias=getattr(config, "patch_bias", True),
        )

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        """Patches down and across an image of ``height`` x ``width`` pixels."""
        return height // self.patch_size[0], width // self.patch_size[1]

    def position_table(
        self,
        table: torch.Tensor,
        slots: int,
        height: int,
        width: int,
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        """A position table trained for these patches, ``(1, slots + patches, hidden)`` with
        ``slots`` rows first for tokens that are not patches (a class token), made fit for an
        image of ``height`` x ``width`` pixels; shared by every vision tower built on these
        patches (ViT, ViTMAE's encoder, CLIP's).

        The configured size uses the table as it is. Another size needs
        ``interpolate_pos_encoding=True``, which resizes the grid of patch positions bicubically
        (``align_corners=False``) to the image's grid and keeps the slots, as transformers'
        ViT and CLIP do; the numbers are theirs.
        """
        if not interpolate_pos_encoding:
            if (height, width) != self.image_size:
                raise ValueError(
                    f"pixel_values are {height}x{width} pixels, but this model takes "
                    f"{self.image_size[0]}x{self.image_size[1]}; resize the images, or pass "
                    "interpolate_pos_encoding=True to resize the positions"
                )
            return table
        grid = self.grid_for(height, width)
        if grid == self.grid_size:  # a bicubic resize to the same grid is the identity
            return table
        patches = resize_position_grid(table[:, slots:], self.grid_size, grid)
        return torch.cat([table[:, :slots], patches], dim=1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        self.check_pixel_values(pixel_values)
        # transformers casts too: images come as float32 whatever the model's dtype.
        pixel_values = pixel_values.to(self.projection.weight.dtype)
        return self.projection(pixel_values).flatten(2).transpose(1, 2)

    def check_pixel_values(self, pixel_values: torch.Tensor | None) -> None:
        """Name what is wrong with images this embedding cannot take, rather than failing
        inside the convolution (or, for an image smaller than a patch, returning nothing)."""
        if pixel_values is None:
            raise ValueError("pixel_values is required: (batch, channels, height, width) floats")
        if not pixel_values.is_floating_point():
            raise ValueError(
                f"pixel_values must hold floats (normalised pixels, as an image processor "
                f"returns them), got dtype {pixel_values.dtype}"
            )
        if pixel_values.dim() != 4:
            raise ValueError(
                f"pixel_values must be (batch, channels, height, width), got shape "
                f"{tuple(pixel_values.shape)}; for one image use pixel_values[None]"
            )
        batch, channels, height, width = pixel_values.shape
        if channels != self.num_channels:
            raise ValueError(
                f"pixel_values have {channels} channels, but this model takes "
                f"num_channels={self.num_channels} (shape {tuple(pixel_values.shape)})"
            )
        if batch == 0:
            raise ValueError(f"pixel_values is an empty batch: shape {tuple(pixel_values.shape)}")
        if height < self.patch_size[0] or width < self.patch_size[1]:
            raise ValueError(
                f"an image of {height}x{width} pixels holds no whole patch of "
                f"{self.patch_size[0]}x{self.patch_size[1]}"
            )


class ViTEmbeddings(nn.Module):
    """Patch embeddings, the class token (``use_class_token``), learned positions, dropout.

    ``position_embeddings`` is the table transformers and timm store, ``(1, slots + patches,
    hidden)`` with one slot for the class token when there is one: a grid of positions kept as
    one tensor, so that it can be resized to another image size and added to any subset of
    the patches (ViTMAE's encoder sees only the unmasked ones).
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embeddings = ViTPatchEmbeddings(config)
        self.num_prefix_tokens = 1 if config.use_class_token else 0
        width = config.hidden_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width)) if config.use_class_token else None
        self.position_embeddings = nn.Parameter(
            torch.zeros(1, self.num_prefix_tokens + self.patch_embeddings.num_patches, width)
        )
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False
    ) -> torch.Tensor:
        """``(batch, slots + patches, hidden)``: the class token first, then the patches in
        row order, each with its position added."""
        patches = self.patch_embeddings(pixel_values)
        table = self.position_table(*pixel_values.shape[-2:], interpolate_pos_encoding)
        # Every slot gets its position, so the table is added whole, in one op: slicing it (as
        # prepend_class_token must for a subset of the patches) adds two slices to the forward
        # and two zero-filled gradients to the backward.
        tokens = patches
        if self.cls_token is not None:
            cls = self.cls_token.expand(patches.shape[0], -1, -1)
            tokens = torch.cat([cls, patches], dim=1)
        return self.dropout(tokens + table)

    def prepend_class_token(self, patches: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """``patches`` (positions already added) with the class token and its position in
        front; unchanged without a class token."""
        if self.cls_token is None:
            return patches
        cls = (self.cls_token + table[:, :1]).expand(patches.shape[0], -1, -1)
        return torch.cat([cls, patches], dim=1)

    def position_table(
        self, height: int, width: int, interpolate_pos_encoding: bool = False
    ) -> torch.Tensor:
        """The positions for an image of ``height`` x ``width`` pixels, ``(1, slots +
        patches, hidden)`` (see :meth:`ViTPatchEmbeddings.position_table`)."""
        return self.patch_embeddings.position_table(
            self.position_embeddings,
            self.num_prefix_tokens,
            height,
            width,
            interpolate_pos_encoding,
        )


def resize_position_grid(
    positions: torch.Tensor, grid: tuple[int, int], new_grid: tuple[int, int]
) -> torch.Tensor:
    """Patch positions ``(1, rows * columns, hidden)`` laid out on ``grid``, resized
    bicubically (``align_corners=False``, as transformers' ViT and CLIP resize them) to
    ``new_grid``: ``(1, new_rows * new_columns, hidden)``."""
    positions = positions.reshape(1, *grid, -1).permute(0, 3, 1, 2)
    positions = nn.functional.interpolate(
        positions, size=new_grid, mode="bicubic", align_corners=False
    )
    return positions.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], -1)


class ViTMLP(nn.Module):
    """The feed-forward: ``fc2(act(fc1(x)))`` (transformers' and timm's names)."""

    def __init__(self, config: PreTrainedConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class ViTLayer(GradientCheckpointingLayer):
    """Pre-norm layer: ``x = x + drop(attention(norm(x)))``, then ``x = x + drop(mlp(norm(x)))``.

    Reads ``hidden_size``, ``num_attention_heads``, ``intermediate_size``, ``hidden_act``
    (``"gelu"``; CLIP's ``"quick_gelu"``, any name transformers knows) and ``layer_norm_eps``
    from the config, and where present ``qkv_bias`` (default ``True``),
    ``hidden_dropout_prob`` and ``attention_probs_dropout_prob`` (default 0), so that a
    sibling package's config can build it. ``is_causal`` makes each token attend only to
    itself and those before it (CLIP's text tower).
    """

    def __init__(
        self, config: PreTrainedConfig, layer_idx: int | None = None, is_causal: bool = False
    ) -> None:
        super().__init__()
        qkv_bias = getattr(config, "qkv_bias", True)
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = Attention(
            config.hidden_size,
            config.num_attention_heads,
            config=config,
            is_causal=is_causal,
            q_bias=qkv_bias,
            k_bias=qkv_bias,
            v_bias=qkv_bias,
            dropout=getattr(config, "attention_probs_dropout_prob", 0.0),
            layer_idx=layer_idx,
        )
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ViTMLP(config)
        self.dropout = nn.Dropout(getattr(config, "hidden_dropout_prob", 0.0))

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        attended, _ = self.attention(self.layernorm_before(hidden_states), attention_mask, **kwargs)
        hidden_states = hidden_states + self.dropout(attended)
        hidden_states = hidden_states + self.dropout(self.mlp(self.layernorm_after(hidden_states)))
        return hidden_states


class ViTEncoder(nn.ModuleList):
    """The ``num_hidden_layers`` layers, run in turn over the whole sequence.

    A ``ModuleList`` with a forward, so that held as ``layers`` its keys read
    ``layers.<i>...`` as in transformers' ViT. ``attention_mask`` is optional, ``(batch,
    tokens)`` with 1 for tokens to attend to: images have no padding, but a sibling that runs
    the encoder on sequences of unequal length passes one. With ``causal`` every layer attends
    causally (CLIP's text tower is this stack with a causal mask).
    """

    def __init__(self, config: PreTrainedConfig, causal: bool = False) -> None:
        super().__init__(
            ViTLayer(config, i, is_causal=causal) for i in range(config.num_hidden_layers)
        )
        self.config = config
        self.causal = causal

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        _, mask = prepare_attention_inputs(
            self.config, hidden_states, attention_mask, None, causal=self.causal, positions="count"
        )
        for layer in self:
            hidden_states = layer(hidden_states, mask, **kwargs)
        return hidden_states


class ViTPooler(nn.Module):
    """``act(dense(pooled))`` (``pooler_act``, tanh by default) on the pooled vector, which is
    the class token's final state with ``pooling="cls"``, as in transformers."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.pooler_output_size)
        self.activation = activation(config.pooler_act)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(pooled))


class ViTPreTrainedModel(ConvertsCheckpoints, PreTrainedModel):
    """Shared by the ViT classes: config, init, backends, output recording, loading."""

    config_class = ViTConfig
    # from_pretrained reads transformers' ViT, and the encoder of a masked autoencoder's.
    checkpoint_converters = (CONVERTER, *MAE_ENCODER_CONVERTERS)
    base_model_prefix = "vit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["ViTEmbeddings", "ViTLayer"]
    # Every backend the core's Attention can call; transformers checks each one's kernels.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # output_hidden_states / output_attentions are recorded by transformers' hooks.
    _can_record_outputs = {"hidden_states": ViTLayer, "attentions": Attention}
    # A masked autoencoder's checkpoint (fine-tuning starts from one, see convert.py) holds a
    # decoder that a ViT leaves out: not worth a line per weight in the load report.
    _keys_to_ignore_on_load_unexpected = [r"^decoder\."]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, ViTEmbeddings):  # transformers' ViT init for its own parameters
            std = self.config.initializer_range
            init.trunc_normal_(module.position_embeddings, mean=0.0, std=std)
            if module.cls_token is not None:
                init.trunc_normal_(module.cls_token, mean=0.0, std=std)


class ViTModel(ViTPreTrainedModel):
    """Embeddings, ``num_hidden_layers`` pre-norm layers, the final LayerNorm and (optionally)
    the pooler.

    ``pooler_output`` is the pooler's output when the model has one (``add_pooling_layer``,
    as transformers' ``ViTModel``), else the pooled vector the classifier reads: the class
    token, or the mean of the patch tokens (``pooling``), after the final norm.
    """

    def __init__(self, config: ViTConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config)
        config.check()
        self.embeddings = ViTEmbeddings(config)
        self.layers = ViTEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = ViTPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self) -> ViTPatchEmbeddings:
        return self.embeddings.patch_embeddings

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)  # hidden_states[-1] is before the norm
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: object,
    ) -> BaseModelOutputWithPooling:
        """``pixel_values`` ``(batch, num_channels, height, width)``, at ``image_size`` unless
        ``interpolate_pos_encoding``. The arguments are transformers' ViT's, in its order."""
        if bool_masked_pos is not None:  # transformers' masked-image-modeling input
            raise ValueError("bool_masked_pos is not supported: this ViT has no mask token")
        hidden_states = self.embeddings(pixel_values, bool(interpolate_pos_encoding))
        hidden_states = self.layers(hidden_states, attention_mask, **kwargs)
        if self.config.final_norm_position == "before_pooling":
            hidden_states = self.layernorm(hidden_states)
        pooled = self.pool(hidden_states)
        if self.pooler is not None:
            pooled = self.pooler(pooled)
        return BaseModelOutputWithPooling(last_hidden_state=hidden_states, pooler_output=pooled)

    def pool(self, last_hidden_state: torch.Tensor) -> torch.Tensor:
        """``(batch, hidden)``: the class token, or the mean over the patch tokens, then the
        final norm where it comes after pooling."""
        if self.config.pooling == "cls":
            pooled = last_hidden_state[:, 0]
        else:
            pooled = last_hidden_state[:, self.embeddings.num_prefix_tokens :].mean(dim=1)
        if self.config.final_norm_position == "after_pooling":
            pooled = self.layernorm(pooled)
        return pooled


class ViTForImageClassification(ViTPreTrainedModel):
    """ViT (without the pooler, as in transformers) and a linear classifier on the pooled
    vector (``pooling``), into ``num_labels`` classes named by ``id2label``.

    The loss follows ``config.problem_type`` as in transformers: mean squared error for
    ``"regression"``, cross entropy for ``"single_label_classification"``, binary cross
    entropy with logits for ``"multi_label_classification"``; when unset it is inferred from
    ``num_labels`` and the labels' dtype (and written to the config).
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vit = ViTModel(config, add_pooling_layer=False)
        self.classifier = (
            nn.Linear(config.hidden_size, config.num_labels)
            if config.num_labels > 0
            else nn.Identity()
        )
        self.loss_type = "ForImageClassification"
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: object,
    ) -> ImageClassifierOutput:
        """``labels``: class ids ``(batch,)``, floats ``(batch,)`` / ``(batch, num_labels)``
        for regression, or 0/1 floats ``(batch, num_labels)`` for multi-label."""
        outputs = self.vit(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            attention_mask=attention_mask,
            return_dict=True,
            **kwargs,
        )
        logits = self.classifier(outputs.pooler_output)
        loss = None
        if labels is not None:
            check_classification_labels(labels, logits, self.config)
            loss = self.loss_function(labels, logits, self.config, **kwargs)
        return ImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
