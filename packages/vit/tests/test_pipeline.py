"""transformers' image-classification pipeline runs our classifier: a PIL image in, the labels
of id2label out, with the probabilities of our own logits."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ViTImageProcessor, ViTImageProcessorPil, pipeline

from scratchformers.vit import ViTForImageClassification

NAMES = {0: "apple", 1: "bicycle", 2: "cloud", 3: "dune", 4: "eel"}


@pytest.mark.parametrize("processor_class", [ViTImageProcessor, ViTImageProcessorPil])
def test_image_classification_pipeline(make_config: Callable, processor_class: type) -> None:
    config = make_config(
        id2label=NAMES, label2id={name: i for i, name in NAMES.items()}, initializer_range=0.2
    )
    model = ViTForImageClassification(config).eval()
    processor = processor_class(size={"height": 20, "width": 20})
    pixels = np.random.default_rng(0).integers(0, 256, size=(33, 27, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)

    classify = pipeline("image-classification", model=model, image_processor=processor)
    predictions = classify(image, top_k=5)

    with torch.no_grad():
        logits = model(**processor(image, return_tensors="pt")).logits[0]
    expected = torch.softmax(logits, dim=-1)
    assert [p["label"] for p in predictions] == [
        NAMES[int(i)] for i in expected.argsort(descending=True)
    ]
    for prediction in predictions:
        index = config.label2id[prediction["label"]]
        assert abs(prediction["score"] - float(expected[index])) <= 1e-5
    assert float(expected.max() - expected.min()) > 1e-3  # the labels are told apart
