"""The one collective the loop's users need and Accelerate does not offer: a gather that keeps
the autograd graph, for losses that compare each example with every other (contrastive).

``accelerator.gather`` returns tensors cut off from the graph, so a loss built on them would
send no gradient back to the other processes' embeddings. ``torch.distributed.nn`` has a
differentiable all-gather; this wraps it so that the same recipe code runs on one process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn


def gather_with_gradients(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's ``tensor`` joined on dimension 0, in process order, keeping gradients.

    On one process (or without ``torch.distributed`` set up) it returns ``tensor`` itself.
    Every process must pass the same shape (the loop's evenly split batches give that).

    The backward pass sums, into each process's own ``tensor``, the gradients that every
    process's loss sends to it. So: let each process's loss be the mean over *its own*
    examples, compared against the gathered ones (its rows of the similarity matrix against
    all columns), as in CLIP; then the gradient that data-parallel training averages over the
    processes equals the gradient of one process computing the loss on the whole batch.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return torch.cat(dist_nn.all_gather(tensor), dim=0)
