"""A contrastive loss over two processes, with `gather_with_gradients`, gives the gradient of
one process computing it on the whole batch; a plain (detached) gather does not.

Marked ``slow``: it starts two gloo processes with torchrun (the ``distributed`` nox session).
This file is also the script those processes run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

pytestmark = pytest.mark.slow

BATCH, FEATURES, EMBEDDING = 8, 5, 4


class DualEncoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)  # the same weights in every process, and for every variant
        self.image = torch.nn.Linear(FEATURES, EMBEDDING)
        self.text = torch.nn.Linear(FEATURES, EMBEDDING)

    def forward(
        self, images: torch.Tensor, texts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(self.image(images), dim=-1), F.normalize(self.text(texts), dim=-1)


def clip_loss(
    images: torch.Tensor, texts: torch.Tensor, gather: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """CLIP's loss for this process's pairs (rows) against every process's (columns)."""
    all_images, all_texts = gather(images), gather(texts)
    rank = dist.get_rank() if dist.is_initialized() else 0
    targets = rank * len(images) + torch.arange(len(images))
    return (
        F.cross_entropy(10 * images @ all_texts.T, targets)
        + F.cross_entropy(10 * texts @ all_images.T, targets)
    ) / 2


def detached_gather(tensor: torch.Tensor) -> torch.Tensor:
    """What ``accelerator.gather`` gives: the other processes' values, without their graph."""
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.detach())
    parts[dist.get_rank()] = tensor
    return torch.cat(parts)


def worker() -> None:
    """Each of the two processes: the one-process reference, then the two-process gradient
    with data-parallel training (which averages the gradients over the processes)."""
    from torch.nn.parallel import DistributedDataParallel

    from scratchformers.training import gather_with_gradients

    generator = torch.Generator().manual_seed(1)
    images = torch.randn(BATCH, FEATURES, generator=generator)
    texts = torch.randn(BATCH, FEATURES, generator=generator)
    reference = DualEncoder()
    clip_loss(*reference(images, texts), gather=lambda t: t).backward()

    dist.init_process_group("gloo")
    rank, share = dist.get_rank(), BATCH // dist.get_world_size()
    mine = slice(rank * share, (rank + 1) * share)
    lines = []
    for gather, should_match in ((gather_with_gradients, True), (detached_gather, False)):
        model = DistributedDataParallel(DualEncoder())
        clip_loss(*model(images[mine], texts[mine]), gather=gather).backward()
        matches = all(
            torch.allclose(parameter.grad, expected.grad, atol=1e-6, rtol=1e-5)
            for parameter, expected in zip(
                model.module.parameters(), reference.parameters(), strict=True
            )
        )
        assert matches == should_match, (gather.__name__, matches)
        lines.append(f"rank {rank}: {gather.__name__} matches the one-process gradient: {matches}")
    # A file per rank: two processes' lines on one stdout can interleave mid-line.
    Path(f"rank{rank}.txt").write_text("\n".join(lines) + "\n")
    dist.destroy_process_group()


def test_two_processes_give_the_one_process_gradient(two_processes: Callable[[str], Path]) -> None:
    folder = two_processes(__file__)
    for rank in (0, 1):
        lines = (folder / f"rank{rank}.txt").read_text().splitlines()
        assert lines == [
            f"rank {rank}: gather_with_gradients matches the one-process gradient: True",
            f"rank {rank}: detached_gather matches the one-process gradient: False",
        ]


if __name__ == "__main__":
    worker()
