"""The clip recipe's contrastive loss on two processes, each with half of a global batch,
equals the one-process loss on the whole batch, and so does the gradient that data-parallel
training averages: the embeddings are gathered with their gradients, so every process's
pairs are negatives for every other's.

Marked ``slow``: it starts two gloo processes with torchrun (the ``distributed`` nox
session). This file is also the script those processes run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.slow

BATCH = 6  # the global batch: 3 pairs per process


def tiny_clip() -> torch.nn.Module:
    from scratchformers.clip import CLIPConfig, CLIPModel

    torch.manual_seed(0)  # the same weights in every process
    config = CLIPConfig(
        text_config={
            "vocab_size": 30,
            "hidden_size": 24,
            "intermediate_size": 40,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 8,
            "eos_token_id": 29,
        },
        vision_config={
            "image_size": 12,
            "patch_size": 4,
            "hidden_size": 24,
            "intermediate_size": 40,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        },
        projection_dim=16,
    )
    return CLIPModel(config)


def global_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, 29, (BATCH, 7), generator=generator)
    lengths = torch.tensor([7, 5, 6, 4, 7, 3])
    attention_mask = (torch.arange(7) < lengths[:, None]).long()
    input_ids[torch.arange(BATCH), lengths - 1] = 29
    input_ids[attention_mask == 0] = 0
    pixel_values = torch.randn(BATCH, 3, 12, 12, generator=generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}


def loss_of(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    from scratchformers.recipes.clip import gathered_contrastive_loss

    outputs = model(**batch)
    return gathered_contrastive_loss(outputs.text_embeds, outputs.image_embeds, outputs.logit_scale)


def worker() -> None:
    from torch.nn.parallel import DistributedDataParallel

    batch = global_batch()
    reference = tiny_clip()
    expected = loss_of(reference, batch)
    expected.backward()

    dist.init_process_group("gloo")
    rank, share = dist.get_rank(), BATCH // dist.get_world_size()
    mine = {key: value[rank * share : (rank + 1) * share] for key, value in batch.items()}
    model = DistributedDataParallel(tiny_clip())
    loss = loss_of(model, mine)
    loss.backward()  # DDP averages the gradients over the processes
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    mean_loss /= dist.get_world_size()
    loss_matches = torch.allclose(mean_loss, expected.detach(), atol=1e-6)
    # Relative to each gradient's largest entry: the two processes sum the same terms in
    # another order, which moves every entry by float32 rounding of the largest ones (up to
    # 4.8e-6 on entries of 8.5 here), small entries included.
    grads_match = all(
        float((parameter.grad - theirs.grad).abs().max())
        <= 1e-5 * float(theirs.grad.abs().max()) + 1e-7
        for parameter, theirs in zip(model.module.parameters(), reference.parameters(), strict=True)
    )
    # A file per rank: two processes' lines on one stdout can interleave mid-line.
    Path(f"rank{rank}.txt").write_text(
        f"rank {rank}: loss {float(mean_loss):.6f} against one process's {float(expected):.6f}; "
        f"loss matches: {loss_matches}; gradients match: {grads_match}\n"
    )
    dist.destroy_process_group()


def test_two_processes_give_the_one_process_loss_and_gradient(
    two_processes: Callable[[str], Path],
) -> None:
    folder = two_processes(__file__)
    for rank in (0, 1):
        line = (folder / f"rank{rank}.txt").read_text().strip()
        assert line.startswith(f"rank {rank}: loss"), line
        assert "loss matches: True; gradients match: True" in line, line


if __name__ == "__main__":
    worker()
