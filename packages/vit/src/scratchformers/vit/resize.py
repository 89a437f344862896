"""Another image size for a trained ViT (or ViTMAE): the position table resized once, so that
the result is a plain model of the new size, which loads and exports as any other."""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
from transformers import PreTrainedModel

from .configuration import as_pair
from .modeling import resize_position_grid

Model = TypeVar("Model", bound=PreTrainedModel)


def with_image_size(model: Model, image_size: int) -> Model:
    """``model`` for square images of ``image_size`` pixels: a new model of its class whose
    config says that size, holding its weights, with every learned position table's patch grid
    resized bicubically to the new grid (as ``interpolate_pos_encoding=True`` resizes it at
    each call, so both give the same outputs), its class slot kept. A table computed from the
    grid (a buffer, such as MAE's fixed sin-cos positions) is computed anew for the new grid.
    ``model`` itself is returned when it already has that size."""
    if as_pair(model.config.image_size) == (image_size, image_size):
        return model
    config = copy.deepcopy(model.config)
    config.image_size = image_size
    # Built on the CPU with the config's init: every weight is then overwritten below except
    # the computed tables, which are this size's.
    resized = type(model)(config)
    grids = {
        name: module.patch_embeddings.grid_size
        for name, module in model.named_modules()
        if hasattr(module, "patch_embeddings") and hasattr(module, "position_embeddings")
    }
    new_grids = {
        name: module.patch_embeddings.grid_size
        for name, module in resized.named_modules()
        if name in grids
    }
    buffers = {name for name, _ in resized.named_buffers()}
    target = resized.state_dict()
    state = {}
    for name, tensor in model.state_dict().items():
        if name not in target:
            continue
        if tensor.shape == target[name].shape:
            state[name] = tensor
        elif name in buffers:
            state[name] = target[name]  # computed from the grid, not learned
        elif (owner := name.removesuffix(".position_embeddings")) in grids:
            grid, new_grid = grids[owner], new_grids[owner]
            slots = tensor.shape[1] - grid[0] * grid[1]
            patches = resize_position_grid(tensor[:, slots:].detach(), grid, new_grid)
            state[name] = torch.cat([tensor[:, :slots].detach(), patches], dim=1)
        else:
            raise ValueError(f"{name} {tuple(tensor.shape)} does not fit image_size={image_size}")
    resized.load_state_dict(state)
    resized.train(model.training)
    return resized.to(next(model.parameters()).device)
