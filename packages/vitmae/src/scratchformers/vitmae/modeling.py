"""The masked autoencoder (He et al., 2021), top to bottom: patches and their fixed 2D sin-cos
positions, per-sample random masking, the ViT encoder on the visible patches, the lightweight
decoder that fills the hidden ones back in with a mask token, and the mean-squared pixel loss
on the hidden patches.

The encoder is the vit package's: :class:`~scratchformers.vit.ViTPatchEmbeddings` (inside
:class:`~scratchformers.vit.ViTEmbeddings`, whose position table has a class slot and can be
added to any subset of the patches), :class:`~scratchformers.vit.ViTLayer` and
:class:`~scratchformers.vit.ViTEncoder`, which the decoder reuses at its own width. Module names
are those of transformers' ViTMAE as it holds them in memory (``vit.embeddings.cls_token``,
``vit.embeddings.position_embeddings``, ``vit.layers.<i>.attention.q_proj``, ``vit.layernorm``,
``decoder.decoder_embed``, ``decoder.mask_token``, ``decoder.decoder_pos_embed``,
``decoder.decoder_layers.<i>...``, ``decoder.decoder_norm``, ``decoder.decoder_pred``), so
that its checkpoints map onto ours by the renames its own loader applies (``convert.py``), and
so that the encoder of either loads into the vit package's ViT classes for fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from scratchformers.core_attention import Attention, ConvertsCheckpoints
from scratchformers.vit import ViTEmbeddings, ViTEncoder, ViTLayer, ViTPatchEmbeddings
from scratchformers.vit.configuration import as_pair

from .configuration import ViTMAEConfig
from .convert import CONVERTER

# --- patches and positions ----------------------------------------------------------------------


def patchify(pixel_values: torch.Tensor, patch_size: int | tuple[int, int]) -> torch.Tensor:
    """``(batch, channels, height, width)`` images -> ``(batch, patches, patch_height *
    patch_width * channels)``: the patches row by row, each one's pixels row by row with the
    channels innermost (transformers' and the paper's order, which the decoder predicts)."""
    patch_height, patch_width = as_pair(patch_size)
    if pixel_values.dim() != 4:
        raise ValueError(
            f"pixel_values must be (batch, channels, height, width), got shape "
            f"{tuple(pixel_values.shape)}"
        )
    batch, channels, height, width = pixel_values.shape
    if height % patch_height or width % patch_width:
        raise ValueError(
            f"an image of {height}x{width} pixels is not a whole number of "
            f"{patch_height}x{patch_width} patches"
        )
    rows, columns = height // patch_height, width // patch_width
    patches = pixel_values.reshape(batch, channels, rows, patch_height, columns, patch_width)
    patches = patches.permute(0, 2, 4, 3, 5, 1)
    return patches.reshape(batch, rows * columns, patch_height * patch_width * channels)


def unpatchify(
    patches: torch.Tensor,
    patch_size: int | tuple[int, int],
    image_size: int | tuple[int, int],
) -> torch.Tensor:
    """The inverse of :func:`patchify`: ``(batch, patches, patch_height * patch_width *
    channels)`` -> ``(batch, channels, height, width)`` images of ``image_size``."""
    patch_height, patch_width = as_pair(patch_size)
    height, width = as_pair(image_size)
    rows, columns = height // patch_height, width // patch_width
    if patches.dim() != 3:
        raise ValueError(
            f"patches must be (batch, patches, pixels per patch), got shape {tuple(patches.shape)}"
        )
    batch, count, size = patches.shape
    if count != rows * columns or size % (patch_height * patch_width):
        raise ValueError(
            f"patches of shape {tuple(patches.shape)} do not tile a {height}x{width} image in "
            f"{patch_height}x{patch_width} patches ({rows * columns} patches of "
            f"{patch_height * patch_width} pixels times the channels)"
        )
    channels = size // (patch_height * patch_width)
    images = patches.reshape(batch, rows, columns, patch_height, patch_width, channels)
    images = images.permute(0, 5, 1, 3, 2, 4)
    return images.reshape(batch, channels, rows * patch_height, columns * patch_width)


def sincos_position_table(grid: tuple[int, int], width: int) -> torch.Tensor:
    """The fixed positions of a ``grid`` of ``(rows, columns)`` patches, ``(1, 1 + rows *
    columns, width)``: a zero row for the class token, then one row per patch in row order.

    Each quarter of a row is a sine or cosine of the patch's column or row index at
    frequencies ``10000 ** (-i / (width / 4))``, in MAE's order ``[sin(column) | cos(column) |
    sin(row) | cos(row)]`` (which its released weights, and transformers, keep), computed in
    float64 as transformers does.
    """
    quarter = width // 4
    frequencies = 1.0 / 10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, columns = torch.meshgrid(
        torch.arange(grid[0], dtype=torch.float64),
        torch.arange(grid[1], dtype=torch.float64),
        indexing="ij",
    )
    by_column = columns.flatten()[:, None] * frequencies
    by_row = rows.flatten()[:, None] * frequencies
    table = torch.cat([by_column.sin(), by_column.cos(), by_row.sin(), by_row.cos()], dim=1)
    table = torch.cat([torch.zeros(1, width, dtype=torch.float64), table])
    return table.float()[None]


def random_masking(
    patches: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep ``int(patches * (1 - mask_ratio))`` patches of each image, chosen per image: those
    with the lowest ``noise`` (uniform random when not given), in the order of their noise.

    Returns ``(kept, mask, ids_restore)``: the kept patches ``(batch, keep, hidden)``; the
    mask ``(batch, patches)``, 1 for a hidden patch and 0 for a kept one; and for each patch
    its place in the noise order, which puts the decoder's sequence (the kept patches, then
    the mask tokens) back in image order. transformers' ViTMAE chooses exactly so: the same
    ``noise`` gives the same patches, mask and ``ids_restore``.
    """
    batch, length, width = patches.shape
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    if noise is None:
        noise = torch.rand(batch, length, device=patches.device)
    elif tuple(noise.shape) != (batch, length):
        raise ValueError(
            f"noise must be (batch, num_patches) = ({batch}, {length}): one number per patch of "
            f"each image, got shape {tuple(noise.shape)}"
        )
    keep = int(length * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1).to(patches.device)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    kept = patches.gather(1, ids_keep[..., None].expand(-1, -1, width))
    mask = (ids_restore >= keep).float()  # hidden: past the kept ones in the noise order
    return kept, mask, ids_restore


# --- the encoder ---------------------------------------------------------------------------------


class ViTMAEEmbeddings(ViTEmbeddings):
    """The vit package's embeddings (patch projection, class token, position table with a class
    slot), masked: the positions are added to every patch, then only the kept patches go on,
    the class token (with its position) in front. No dropout here, as in transformers' ViTMAE.

    ``position_embeddings`` is fixed: the sin-cos table, filled when a model is built and
    stored in checkpoints under the same name as transformers' (and a ViT's learned table),
    but held as a buffer, so no optimizer ever moves it. transformers holds it as a parameter
    without gradient, which its own ``from_pretrained`` makes trainable again.
    """

    def __init__(self, config: ViTMAEConfig) -> None:
        super().__init__(config)
        shape = self.position_embeddings.shape
        del self.position_embeddings  # the vit package's learned table
        self.register_buffer("position_embeddings", torch.zeros(shape))

    def forward(
        self,
        pixel_values: torch.Tensor,
        noise: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(embeddings, mask, ids_restore)``: ``(batch, 1 + kept, hidden)``, and see
        :func:`random_masking`."""
        patches = self.patch_embeddings(pixel_values)
        table = self.position_table(*pixel_values.shape[-2:], interpolate_pos_encoding)
        patches = patches + table[:, 1:]
        kept, mask, ids_restore = random_masking(patches, self.config.mask_ratio, noise)
        return self.prepend_class_token(kept, table), mask, ids_restore


# --- the decoder ---------------------------------------------------------------------------------


class DecoderConfig:
    """The config as the decoder's layers read it: ``hidden_size``, ``num_hidden_layers``,
    ``num_attention_heads`` and ``intermediate_size`` are the decoder's, everything else (norm
    epsilon, activation, biases, dropouts, the attention backend) the model's config, read at
    each use. So a backend chosen after building (``set_attn_implementation``) reaches the
    decoder too, where transformers' ViTMAE gives its decoder a copy of the config."""

    DECODER_FIELDS = {
        "hidden_size": "decoder_hidden_size",
        "num_hidden_layers": "decoder_num_hidden_layers",
        "num_attention_heads": "decoder_num_attention_heads",
        "intermediate_size": "decoder_intermediate_size",
    }

    def __init__(self, config: PreTrainedConfig) -> None:
        self.model_config = config

    def __getattr__(self, name: str) -> object:
        if name.startswith("__") or name == "model_config":  # copying and pickling look these up
            raise AttributeError(name)
        return getattr(self.model_config, self.DECODER_FIELDS.get(name, name))


class ViTMAEDecoder(nn.Module):
    """From the encoder's output back to pixels: a linear map to the decoder's width, a
    learned mask token in place of every hidden patch, the sequence put back in image order,
    fixed sin-cos positions at the decoder's width, ``decoder_num_hidden_layers`` ViT layers, a
    LayerNorm, and a linear map of each patch to its ``patch_size**2 * num_channels`` pixels.
    """

    def __init__(self, config: ViTMAEConfig, grid: tuple[int, int]) -> None:
        super().__init__()
        self.config = DecoderConfig(config)
        self.grid = grid
        width = config.decoder_hidden_size
        self.decoder_embed = nn.Linear(config.hidden_size, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        # Fixed sin-cos positions, a buffer as the encoder's (ViTMAEEmbeddings).
        self.register_buffer("decoder_pos_embed", torch.zeros(1, 1 + grid[0] * grid[1], width))
        self.decoder_layers = ViTEncoder(self.config)
        self.decoder_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.decoder_pred = nn.Linear(width, config.patch_size**2 * config.num_channels)

    def forward(
        self,
        latent: torch.Tensor,
        ids_restore: torch.Tensor,
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        """``latent``: the encoder's output ``(batch, 1 + kept, hidden)``; returns the
        predicted pixels of every patch ``(batch, patches, patch_size**2 * num_channels)``."""
        hidden_states = self.decoder_embed(latent)
        batch, visible, width = hidden_states.shape
        patches = ids_restore.shape[1]
        mask_tokens = self.mask_token.expand(batch, patches + 1 - visible, -1)
        shuffled = torch.cat([hidden_states[:, 1:], mask_tokens], dim=1)  # in noise order
        index = ids_restore.to(shuffled.device)[..., None].expand(-1, -1, width)
        in_order = shuffled.gather(1, index)
        hidden_states = torch.cat([hidden_states[:, :1], in_order], dim=1)
        hidden_states = hidden_states + self.position_table(patches, interpolate_pos_encoding)
        hidden_states = self.decoder_layers(hidden_states)
        logits = self.decoder_pred(self.decoder_norm(hidden_states))
        return logits[:, 1:]  # the class token predicts nothing

    def position_table(self, patches: int, interpolate_pos_encoding: bool) -> torch.Tensor:
        """The decoder's positions for ``patches`` patches. For another count
        (``interpolate_pos_encoding``), the patch rows are resampled as one sequence, bicubically
        along it, to that count, and the class slot kept: transformers' ViTMAE decoder does
        exactly this (not a 2D resize of the grid), and so do we, for its numbers."""
        table = self.decoder_pos_embed
        trained = table.shape[1] - 1
        if not interpolate_pos_encoding or patches == trained:
            return table
        rows = table[:, 1:].reshape(1, 1, trained, -1).permute(0, 3, 1, 2)
        rows = nn.functional.interpolate(
            rows, size=(1, patches), mode="bicubic", align_corners=False
        )
        rows = rows.permute(0, 2, 3, 1).reshape(1, patches, -1)
        return torch.cat([table[:, :1], rows], dim=1)


# --- outputs -------------------------------------------------------------------------------------


@dataclass
class ViTMAEModelOutput(ModelOutput):
    """transformers' ``ViTMAEModelOutput``, field for field.

    Attributes:
        last_hidden_state: ``(batch, 1 + kept, hidden)``, the class token and the kept patches
            in noise order, after the final norm.
        mask: ``(batch, patches)``, 1 for a hidden patch, 0 for a kept one.
        ids_restore: ``(batch, patches)``, each patch's place in the noise order.
        hidden_states: with ``output_hidden_states``, the embeddings and each layer's output
            (before the final norm).
        attentions: with ``output_attentions`` (eager backend), each layer's probabilities.
    """

    last_hidden_state: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    ids_restore: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class ViTMAEForPreTrainingOutput(ModelOutput):
    """transformers' ``ViTMAEForPreTrainingOutput``, field for field.

    Attributes:
        loss: the mean squared error over the hidden patches' pixels.
        logits: ``(batch, patches, patch_size**2 * num_channels)``, the predicted pixels of
            every patch (normalised per patch with ``norm_pix_loss``); :func:`unpatchify` makes
            images of them.
        mask, ids_restore, hidden_states, attentions: the encoder's, as in
            :class:`ViTMAEModelOutput`.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    ids_restore: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


# --- the models ----------------------------------------------------------------------------------


class ViTMAEPreTrainedModel(ConvertsCheckpoints, PreTrainedModel):
    """Shared by the ViTMAE classes: config, init, backends, output recording, loading."""

    config_class = ViTMAEConfig
    checkpoint_converters = (CONVERTER,)  # from_pretrained reads transformers' ViTMAE too
    base_model_prefix = "vit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["ViTMAEEmbeddings", "ViTLayer", "ViTMAEDecoder"]
    # Every backend the core's Attention can call; transformers checks each one's kernels.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # The encoder's hidden states and attentions, recorded by transformers' hooks (the
    # decoder's are not, as in transformers).
    _can_record_outputs = {"hidden_states": ViTLayer, "attentions": Attention}

    def _init_weights(self, module: nn.Module) -> None:
        """transformers' init (normal linear weights, unit norms), and MAE's own: the fixed
        sin-cos tables, the class and mask tokens ~ N(0, initializer_range), the patch
        projection uniform as a linear layer's (Xavier). transformers 5.24 leaves the tables of
        a fresh model at zero; ours are filled."""
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, ViTMAEEmbeddings):
            table = sincos_position_table(
                module.patch_embeddings.grid_size, self.config.hidden_size
            )
            init.copy_(module.position_embeddings, table)
            init.normal_(module.cls_token, std=std)
        elif isinstance(module, ViTPatchEmbeddings):
            weight = module.projection.weight
            if not getattr(weight, "_is_hf_initialized", False):  # a view loses the flag
                init.xavier_uniform_(weight.view(weight.shape[0], -1))
        elif isinstance(module, ViTMAEDecoder):
            table = sincos_position_table(module.grid, self.config.decoder_hidden_size)
            init.copy_(module.decoder_pos_embed, table)
            init.normal_(module.mask_token, std=std)


class ViTMAEModel(ViTMAEPreTrainedModel):
    """The encoder: masked embeddings, ``num_hidden_layers`` ViT layers over the class token
    and the kept patches, and the final LayerNorm."""

    def __init__(self, config: ViTMAEConfig) -> None:
        super().__init__(config)
        config.check()
        self.embeddings = ViTMAEEmbeddings(config)
        self.layers = ViTEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> ViTPatchEmbeddings:
        return self.embeddings.patch_embeddings

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)  # hidden_states[-1] is before the norm
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: object,
    ) -> ViTMAEModelOutput:
        """``pixel_values`` ``(batch, num_channels, height, width)``, at ``image_size`` unless
        ``interpolate_pos_encoding``; ``noise`` ``(batch, num_patches)`` fixes which patches are
        kept (see :func:`random_masking`); ``attention_mask`` ``(batch, 1 + kept)`` over the
        encoder's tokens, as transformers' ViTMAE takes it. The arguments are transformers',
        in its order."""
        hidden_states, mask, ids_restore = self.embeddings(
            pixel_values, noise, bool(interpolate_pos_encoding)
        )
        hidden_states = self.layers(hidden_states, attention_mask, **kwargs)
        return ViTMAEModelOutput(
            last_hidden_state=self.layernorm(hidden_states), mask=mask, ids_restore=ids_restore
        )


class ViTMAEForPreTraining(ViTMAEPreTrainedModel):
    """The encoder, the decoder, and the reconstruction loss: the mean over the hidden patches
    of the mean squared error of their pixels (each target patch normalised by its own mean
    and variance with ``norm_pix_loss``). With ``mask_ratio=0`` nothing is hidden and the loss
    is NaN (0 / 0), as in transformers."""

    def __init__(self, config: ViTMAEConfig) -> None:
        super().__init__(config)
        self.vit = ViTMAEModel(config)
        self.decoder = ViTMAEDecoder(config, self.vit.embeddings.patch_embeddings.grid_size)
        self.post_init()

    def get_input_embeddings(self) -> ViTPatchEmbeddings:
        return self.vit.get_input_embeddings()

    def patchify(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False
    ) -> torch.Tensor:
        """transformers' ``ViTMAEForPreTraining.patchify``: :func:`patchify` at this model's
        patch size. Any image that is a whole number of patches is cut, so
        ``interpolate_pos_encoding`` (transformers' argument) changes nothing."""
        channels = pixel_values.shape[1] if pixel_values.dim() == 4 else None
        if channels is not None and channels != self.config.num_channels:
            raise ValueError(
                f"pixel_values have {channels} channels, but this model takes "
                f"num_channels={self.config.num_channels}"
            )
        return patchify(pixel_values, self.config.patch_size)

    def unpatchify(
        self,
        patchified_pixel_values: torch.Tensor,
        original_image_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """transformers' ``ViTMAEForPreTraining.unpatchify``: :func:`unpatchify` at this model's
        patch size, to ``original_image_size`` (default ``image_size``)."""
        size = self.config.image_size if original_image_size is None else original_image_size
        return unpatchify(patchified_pixel_values, self.config.patch_size, size)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: object,
    ) -> ViTMAEForPreTrainingOutput:
        """The arguments of :meth:`ViTMAEModel.forward`; the loss is always computed."""
        outputs = self.vit(
            pixel_values,
            noise=noise,
            interpolate_pos_encoding=interpolate_pos_encoding,
            attention_mask=attention_mask,
            return_dict=True,
            **kwargs,
        )
        interpolate = bool(interpolate_pos_encoding)
        logits = self.decoder(outputs.last_hidden_state, outputs.ids_restore, interpolate)
        loss = self.reconstruction_loss(pixel_values, logits, outputs.mask)
        return ViTMAEForPreTrainingOutput(
            loss=loss,
            logits=logits,
            mask=outputs.mask,
            ids_restore=outputs.ids_restore,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def reconstruction_loss(
        self, pixel_values: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Mean squared error per patch, averaged over the hidden patches only."""
        target = patchify(pixel_values, self.config.patch_size)
        if self.config.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        per_patch = ((logits - target) ** 2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()
