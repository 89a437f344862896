"""The vitmae recipe's held-out masks: each image's noise is seeded by its own pixels, so an
image hides the same patches in any batch, at any evaluation, without touching the training's
random state."""

from __future__ import annotations

import torch

from scratchformers.recipes.vitmae import held_out_noise


def test_each_image_hides_the_same_patches_in_any_batch() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(5, 3, 12, 20, generator=generator)  # 3 x 5 patches of 4
    state = torch.random.get_rng_state()
    together = held_out_noise(images, patch_size=4)
    assert torch.equal(torch.random.get_rng_state(), state), "the global generator moved"
    assert together.shape == (5, 15)
    alone = torch.cat([held_out_noise(images[i : i + 1], patch_size=4) for i in range(5)])
    reordered = held_out_noise(images.flip(0), patch_size=4).flip(0)
    assert torch.equal(together, alone) and torch.equal(together, reordered)
    # Different images hide different patches, and a changed pixel changes the mask.
    assert len({tuple(row.argsort()[:6].tolist()) for row in together}) == 5
    changed = images.clone()
    changed[0, 0, 0, 0] += 1e-3
    assert not torch.equal(held_out_noise(changed[:1], patch_size=4), together[:1])
