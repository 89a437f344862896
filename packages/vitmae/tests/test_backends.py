"""Attention backends and training: a backend chosen in from_pretrained reaches the encoder's
and the decoder's layers, eager gives sdpa's numbers, and gradient checkpointing (encoder and
decoder) changes no gradient."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from scratchformers.vitmae import ViTMAEForPreTraining


def _attention_backends(model: ViTMAEForPreTraining) -> set[str]:
    layers = [*model.vit.layers, *model.decoder.decoder_layers]
    return {layer.attention.attn_implementation for layer in layers}


def test_eager_gives_the_numbers_of_sdpa(
    make_config: Callable, images: Callable, noise: Callable, tmp_path: Path
) -> None:
    ViTMAEForPreTraining(make_config(initializer_range=0.2)).save_pretrained(tmp_path)
    outputs = {}
    for backend in ("sdpa", "eager", "flex_attention"):
        model = ViTMAEForPreTraining.from_pretrained(tmp_path, attn_implementation=backend)
        assert _attention_backends(model) == {backend}
        if backend != "flex_attention":  # accepted and reached; run on a GPU only
            with torch.no_grad():
                outputs[backend] = model.eval()(images(), noise=noise())
    for name in ("logits", "loss"):
        expected = getattr(outputs["sdpa"], name)
        torch.testing.assert_close(getattr(outputs["eager"], name), expected, atol=1e-5, rtol=0)


def test_gradient_checkpointing_changes_no_gradient(
    make_config: Callable, images: Callable, noise: Callable
) -> None:
    model = ViTMAEForPreTraining(make_config(initializer_range=0.2)).train()
    pixels, chosen = images(), noise()
    model(pixels, noise=chosen).loss.backward()
    plain = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert model.vit.layers[0].gradient_checkpointing
    assert model.decoder.decoder_layers[0].gradient_checkpointing
    model(pixels, noise=chosen).loss.backward()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, plain[name], atol=1e-6, rtol=1e-5, msg=name)
