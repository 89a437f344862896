"""Parity with transformers' own ViTMAE classes holding the same weights, fp32, within 1e-4, for
the same ``noise``: the loss (with and without ``norm_pix_loss``), the predicted patches, the
mask and ``ids_restore`` (equal), the encoder's output, hidden states and eager attention
probabilities, an attention mask, other image sizes with ``interpolate_pos_encoding``, the
random masking drawn from the same seed, the gradients of the loss, and ``patchify`` /
``unpatchify`` (24x24 images in 4x4 patches, hidden 36, 3 heads, 2 layers, decoder hidden 20,
2 heads, 2 layers, mask ratio 0.6, batch 3)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from scratchformers.vitmae import patchify, unpatchify


def _assert_same_masking(got: object, expected: object) -> None:
    assert torch.equal(got.mask, expected.mask), (got.mask, expected.mask)
    assert torch.equal(got.ids_restore, expected.ids_restore)
    assert got.mask.dtype == expected.mask.dtype and got.ids_restore.dtype == torch.long


@pytest.mark.parametrize("norm_pix_loss", [False, True], ids=["pixels", "norm_pix_loss"])
def test_loss_logits_mask_and_ids_restore(
    make_pair: Callable,
    images: Callable,
    noise: Callable,
    assert_matches: Callable,
    norm_pix_loss: bool,
) -> None:
    pair = make_pair("pretraining", norm_pix_loss=norm_pix_loss)
    pixels, chosen = images(), noise()
    with torch.no_grad():
        got = pair.ours(pixels, noise=chosen)
        expected = pair.theirs(pixels, noise=chosen)
    assert got.logits.shape == (3, 36, 4 * 4 * 3)
    assert got.mask.sum(dim=1).tolist() == [22.0, 22.0, 22.0]  # 36 - int(36 * 0.4) hidden
    _assert_same_masking(got, expected)
    assert_matches(got.logits, expected.logits)
    assert_matches(got.loss, expected.loss, what="loss")
    assert float(got.loss) > 0


def test_the_encoder_output(
    make_pair: Callable, images: Callable, noise: Callable, assert_matches: Callable
) -> None:
    pair = make_pair("base")
    pixels, chosen = images(), noise()
    with torch.no_grad():
        got, expected = pair.ours(pixels, noise=chosen), pair.theirs(pixels, noise=chosen)
    assert got.last_hidden_state.shape == (3, 1 + 14, 36)  # the class token and the kept
    _assert_same_masking(got, expected)
    assert_matches(got.last_hidden_state, expected.last_hidden_state, what="hidden state")


def test_hidden_states_and_eager_attentions(
    make_pair: Callable, images: Callable, noise: Callable, assert_matches: Callable
) -> None:
    """The encoder's (transformers records none of the decoder's)."""
    pair = make_pair("pretraining", attn_implementation="eager")
    pixels, chosen = images(), noise()
    options = {"noise": chosen, "output_attentions": True, "output_hidden_states": True}
    with torch.no_grad():
        got, expected = pair.ours(pixels, **options), pair.theirs(pixels, **options)
    assert len(got.hidden_states) == len(expected.hidden_states) == 3  # embeddings + 2 layers
    for mine, theirs in zip(got.hidden_states, expected.hidden_states, strict=True):
        assert_matches(mine, theirs, what="hidden state")
    assert len(got.attentions) == len(expected.attentions) == 2
    for mine, theirs in zip(got.attentions, expected.attentions, strict=True):
        assert mine.shape == (3, 3, 15, 15)
        assert_matches(mine, theirs, what="attention probability")
    assert_matches(got.logits, expected.logits)


def test_an_attention_mask_over_the_encoder_tokens(
    make_pair: Callable, images: Callable, noise: Callable, assert_matches: Callable
) -> None:
    pair = make_pair("pretraining")
    pixels, chosen = images(), noise()
    mask = torch.ones(3, 15, dtype=torch.long)
    mask[0, 3:6] = 0
    with torch.no_grad():
        got = pair.ours(pixels, noise=chosen, attention_mask=mask)
        expected = pair.theirs(pixels, noise=chosen, attention_mask=mask)
        unmasked = pair.ours(pixels, noise=chosen)
    assert_matches(got.logits, expected.logits)
    assert not torch.allclose(got.logits[0], unmasked.logits[0], atol=1e-3)


@pytest.mark.parametrize(("height", "width"), [(24, 24), (32, 32), (16, 28)])
def test_other_image_sizes_with_interpolated_positions(
    make_pair: Callable,
    images: Callable,
    noise: Callable,
    assert_matches: Callable,
    height: int,
    width: int,
) -> None:
    """The encoder's grid of positions resized bicubically, the decoder's as transformers'
    ViTMAE resizes it (one sequence); at the configured size nothing changes."""
    pair = make_pair("pretraining")
    pixels = images(height=height, width=width)
    chosen = noise(patches=(height // 4) * (width // 4))
    with torch.no_grad():
        got = pair.ours(pixels, noise=chosen, interpolate_pos_encoding=True)
        expected = pair.theirs(pixels, noise=chosen, interpolate_pos_encoding=True)
    _assert_same_masking(got, expected)
    assert_matches(got.logits, expected.logits)
    assert_matches(got.loss, expected.loss, what="loss")
    if (height, width) == (24, 24):
        with torch.no_grad():
            assert torch.equal(got.logits, pair.ours(pixels, noise=chosen).logits)


def test_random_masking_draws_as_transformers_does(
    make_pair: Callable, images: Callable, assert_matches: Callable
) -> None:
    """Without ``noise``, the same seed hides the same patches; each image its own."""
    pair = make_pair("pretraining")
    pixels = images()
    with torch.no_grad():
        torch.manual_seed(7)
        got = pair.ours(pixels)
        torch.manual_seed(7)
        expected = pair.theirs(pixels)
    _assert_same_masking(got, expected)
    assert_matches(got.loss, expected.loss, what="loss")
    assert not torch.equal(got.mask[0], got.mask[1])
    assert sorted(got.ids_restore[0].tolist()) == list(range(36))


def test_gradients_of_the_loss(
    make_pair: Callable, images: Callable, noise: Callable, assert_matches: Callable
) -> None:
    """Every weight gets transformers' gradient; the fixed position tables are buffers here
    and get none."""
    pair = make_pair("pretraining", norm_pix_loss=True)
    pixels, chosen = images(), noise()
    pair.ours(pixels, noise=chosen).loss.backward()
    pair.theirs(pixels, noise=chosen).loss.backward()
    theirs = dict(pair.theirs.named_parameters())
    tables = {"vit.embeddings.position_embeddings", "decoder.decoder_pos_embed"}
    ours = dict(pair.ours.named_parameters())
    assert set(ours) == set(theirs) - tables
    assert tables <= set(dict(pair.ours.named_buffers()))
    for name, parameter in ours.items():
        if name.endswith("k_proj.bias"):  # shifts every score of a query alike: no gradient
            assert float(parameter.grad.abs().max()) < 1e-6, name
            continue
        assert_matches(parameter.grad, theirs[name].grad, what="gradient")


def test_patchify_and_unpatchify_are_transformers_and_invert_each_other(
    make_pair: Callable, images: Callable
) -> None:
    pair = make_pair("pretraining")
    pixels = images()
    patches = patchify(pixels, 4)
    assert patches.shape == (3, 36, 48)
    assert torch.equal(patches, pair.theirs.patchify(pixels))
    assert torch.equal(pair.ours.patchify(pixels), patches)
    assert torch.equal(unpatchify(patches, 4, 24), pair.theirs.unpatchify(patches))
    assert torch.equal(pair.ours.unpatchify(patches), pixels)
    assert torch.equal(unpatchify(patches, 4, 24), pixels)
    # Another size, and a pixel's place: patch 7 is row 1, column 1 of the grid.
    wide = images(batch=2, height=8, width=20)
    assert torch.equal(unpatchify(patchify(wide, 4), 4, (8, 20)), wide)
    assert torch.equal(pair.ours.unpatchify(patchify(wide, 4), (8, 20)), wide)
    assert torch.equal(
        patchify(pixels, 4)[:, 7].reshape(3, 4, 4, 3), pixels[..., 4:8, 4:8].permute(0, 2, 3, 1)
    )
    predicted = torch.randn(3, 36, 48)
    assert torch.equal(patchify(unpatchify(predicted, 4, 24), 4), predicted)
