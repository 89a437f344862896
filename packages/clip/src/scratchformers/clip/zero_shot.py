"""Zero-shot classification, CLIP's headline use: no classifier is trained; each class name is
written into a sentence ("a photo of a {}."), the sentences are embedded by the text tower,
and each image goes to the class whose sentence lies nearest to it.

With several templates the class's embedding is the mean of its normalised sentence
embeddings, normalised again (the prompt ensembling of CLIP's paper), so no single wording
decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .modeling import CLIPModel


def class_embeddings(
    model: CLIPModel,
    processor: Any,
    class_names: Sequence[str],
    template: str | Sequence[str] = "a photo of a {}.",
) -> torch.Tensor:
    """``(classes, projection_dim)``: each class's normalised text embedding, averaged over
    the templates (each with one ``{}`` where the class name goes)."""
    templates = [template] if isinstance(template, str) else list(template)
    if not class_names:
        raise ValueError("class_names is empty: give at least one class to choose from")
    if not templates:
        raise ValueError("template is an empty list: give at least one, such as 'a photo of a {}.'")
    for text in templates:
        if text.count("{}") != 1:
            raise ValueError(
                f"each template needs exactly one '{{}}' for the class name, got {text!r}"
            )
    device = model.logit_scale.device
    embeddings = []
    for name in class_names:
        texts = processor(
            text=[text.format(name) for text in templates], padding=True, return_tensors="pt"
        )
        texts = {key: value.to(device) for key, value in texts.items()}
        features = model.get_text_features(**texts).pooler_output
        embeddings.append(F.normalize(F.normalize(features, dim=-1).mean(dim=0), dim=-1))
    return torch.stack(embeddings)


@torch.no_grad()
def zero_shot_classify(
    model: CLIPModel,
    processor: Any,
    images: Any,
    class_names: Sequence[str],
    template: str | Sequence[str] = "a photo of a {}.",
) -> torch.Tensor:
    """Per-image probabilities over ``class_names``, ``(images, classes)``, rows summing to 1.

    Args:
        model: a :class:`CLIPModel` (ours, or transformers' CLIP: only ``get_text_features``,
            ``get_image_features`` and ``logit_scale`` are used).
        processor: a ``CLIPProcessor`` (or anything called as ``processor(text=...)`` and
            ``processor(images=...)`` that returns model inputs), holding the model's
            tokenizer and image processor.
        images: what the image processor takes (PIL images, arrays), or ``pixel_values``
            already prepared as a ``(batch, channels, height, width)`` tensor.
        class_names: the classes, written as they would read in a sentence.
        template: one template or a list (averaged); ``{}`` is where the name goes.
    """
    was_training = model.training
    model.eval()
    try:
        classes = class_embeddings(model, processor, class_names, template)
        if isinstance(images, torch.Tensor):
            pixel_values = images
        else:
            pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
        pixel_values = pixel_values.to(model.logit_scale.device)
        image_embeds = F.normalize(model.get_image_features(pixel_values).pooler_output, dim=-1)
        logits = model.logit_scale.exp() * image_embeds @ classes.T
        return logits.softmax(dim=-1)
    finally:
        model.train(was_training)
