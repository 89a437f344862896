"""Zero-shot classification: ``zero_shot_classify`` computes CLIP's rule (with template
averaging) and gives transformers' CLIP the same probabilities as ours; transformers'
``zero-shot-image-classification`` pipeline runs on our model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import pipeline

from scratchformers.clip import zero_shot_classify

CLASSES = ["red circle", "blue square", "green star", "yellow cross"]
WORDS = [
    "a",
    "photo",
    "of",
    "this",
    "is",
    "red",
    "blue",
    "green",
    "yellow",
    "circle",
    "square",
    "star",
    "cross",
    ".",
]


def pil_images(count: int = 3) -> list[Image.Image]:
    generator = np.random.default_rng(0)
    return [
        Image.fromarray(generator.integers(0, 256, (26 + 3 * i, 23, 3), dtype=np.uint8))
        for i in range(count)
    ]


def test_probabilities_follow_clip_s_rule(make_pair, make_processor):
    theirs, model, _ = make_pair()
    processor = make_processor(WORDS)
    images = pil_images()
    probs = zero_shot_classify(model, processor, images, CLASSES)
    assert probs.shape == (3, 4)
    assert torch.allclose(probs.sum(dim=-1), torch.ones(3))

    with torch.no_grad():  # the rule written out, on transformers' model with the same weights
        texts = processor(
            text=[f"a photo of a {c}." for c in CLASSES], padding=True, return_tensors="pt"
        )
        pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
        text = F.normalize(theirs.get_text_features(**texts).pooler_output, dim=-1)
        image = F.normalize(theirs.get_image_features(pixel_values).pooler_output, dim=-1)
        expected = (theirs.logit_scale.exp() * image @ text.T).softmax(dim=-1)
    assert float((probs - expected).abs().max()) <= 1e-5
    assert float(expected.std()) > 1e-3
    # transformers' CLIP goes through the same call and agrees.
    assert torch.allclose(
        zero_shot_classify(theirs, processor, pixel_values, CLASSES), probs, atol=1e-5
    )


def test_several_templates_are_averaged(make_pair, make_processor):
    _, model, _ = make_pair()
    processor = make_processor(WORDS)
    templates = ["a photo of a {}.", "this is a {}.", "{}"]
    pixel_values = processor(images=pil_images(), return_tensors="pt")["pixel_values"]
    probs = zero_shot_classify(model, processor, pixel_values, CLASSES, template=templates)
    with torch.no_grad():
        image = F.normalize(model.get_image_features(pixel_values).pooler_output, dim=-1)
        per_template = []
        for template in templates:
            texts = processor(
                text=[template.format(c) for c in CLASSES], padding=True, return_tensors="pt"
            )
            per_template.append(F.normalize(model.get_text_features(**texts).pooler_output, dim=-1))
        classes = F.normalize(torch.stack(per_template).mean(dim=0), dim=-1)
        expected = (model.logit_scale.exp() * image @ classes.T).softmax(dim=-1)
    assert float((probs - expected).abs().max()) <= 1e-5
    single = zero_shot_classify(model, processor, pixel_values, CLASSES, template=templates[0])
    assert float((single - probs).abs().max()) > 1e-4  # the ensemble is not one template


def test_bad_templates_and_classes_are_named(make_pair, make_processor):
    _, model, _ = make_pair()
    processor = make_processor(WORDS)
    images = pil_images(1)
    with pytest.raises(ValueError, match=r"exactly one '\{\}'"):
        zero_shot_classify(model, processor, images, CLASSES, template="a photo")
    with pytest.raises(ValueError, match="class_names is empty"):
        zero_shot_classify(model, processor, images, [])


def test_the_zero_shot_pipeline_runs_our_model(make_pair, make_processor):
    _, model, _ = make_pair()
    processor = make_processor(WORDS)
    classifier = pipeline(
        "zero-shot-image-classification",
        model=model,
        tokenizer=processor.tokenizer,
        image_processor=processor.image_processor,
    )
    image = pil_images(1)[0]
    results = classifier(image, candidate_labels=CLASSES)
    assert sorted(r["label"] for r in results) == sorted(CLASSES)
    # The pipeline's default template, through our call: the same scores.
    probs = zero_shot_classify(
        model, processor, [image], CLASSES, template="This is a photo of {}."
    )
    for result in results:
        assert result["score"] == pytest.approx(
            float(probs[0, CLASSES.index(result["label"])]), abs=1e-5
        )
