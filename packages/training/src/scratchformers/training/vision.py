"""Recipes for models that read images: :class:`ImageRecipe` (the images, their size, the image
processor and augmentation) and :class:`ImageClassificationRecipe` (labels, accuracy, a
confusion matrix). Model packages subclass them and write ``build_model``.

Like :mod:`scratchformers.training.recipe`, this module is what ``--help`` imports: torch,
transformers and the image helpers of :mod:`scratchformers.training.images` come in inside
the hooks.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .recipe import EvalResults, Evaluation, ModelFlag, Recipe, RecipeData

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from .settings import TrainingSettings

CONFUSION_MATRIX_FILE = "confusion_matrix.png"
MIN_SHAPES_SIZE = 8  # pixels: the generated shapes need that many to be told apart at all


class ImageRecipe(Recipe):
    """A model on images (``--dataset``: generated shapes by default, or a folder with one
    subfolder per class): square images of ``--image-size`` pixels, RGB, augmented in the
    training set (``--augment`` / ``--no-augment``, or the preset's ``augment``), normalised by an image processor saved with
    the model; throughput in images.

    Reads the model options ``image_size`` (``--image-size``), ``patch_size`` when the model
    cuts images into patches (the image size must be a multiple of it), and ``train_images``
    / ``eval_images``: how many shapes to draw, unless ``--num-train-images`` /
    ``--num-eval-images`` say.
    """

    item_unit: ClassVar[str] = "images"
    processor_auto_class: ClassVar[str] = "AutoImageProcessor"
    model_flags: ClassVar[dict[str, ModelFlag]] = {
        "--image-size": ModelFlag(
            "image_size", "side of the square images the model reads, in pixels"
        ),
    }
    # The image processor's normalisation (ViT's): pixels in [0, 1] become (x - 0.5) / 0.5.
    image_mean: ClassVar[tuple[float, ...]] = (0.5, 0.5, 0.5)
    image_std: ClassVar[tuple[float, ...]] = (0.5, 0.5, 0.5)
    dataset_formats: ClassVar[str] = (
        "a folder of images with one subfolder per class (cats/, dogs/, ...; "
        "imagefolder:FOLDER says the same); its validation/ or test/ split is held out if it "
        "has one; default: generated shapes, offline"
    )
    default_eval_fraction: ClassVar[float] = 0.1
    # Generated shapes when the preset does not say how many.
    default_train_images: ClassVar[int] = 5000
    default_eval_images: ClassVar[int] = 1000

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        data = parser.add_argument_group("image data")
        data.add_argument(
            "--num-train-images",
            type=int,
            default=None,
            metavar="N",
            help="training images: how many shapes to draw (default: the preset's), or at "
            "most this many of a folder's (default: all)",
        )
        data.add_argument(
            "--num-eval-images",
            type=int,
            default=None,
            metavar="N",
            help="held-out images, likewise (default: the preset's shapes, a folder's all)",
        )
        data.add_argument(
            "--augment",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="random shifts, flips and brightness or contrast changes of the training "
            "images (never of the held-out ones); --no-augment trains on them as they are "
            "(default: the preset's, else on)",
        )

    def check_image_size(self, options: argparse.Namespace) -> None:
        """Raise a ``ValueError`` naming the flags when the image size cannot work: it must be
        positive and, for a model that cuts images into patches, a multiple of the patch size
        (a ViT would otherwise leave the pixels past the last whole patch unread)."""
        image_size, patch_size = options.image_size, options.patch_size
        if patch_size is not None and image_size % patch_size:
            below = image_size // patch_size * patch_size
            sizes = f"{below} or {below + patch_size}" if below else str(patch_size)
            raise ValueError(
                f"--image-size {image_size} is not a multiple of the patch size {patch_size} "
                f"({self._flag('patch_size')}): the model cuts the image into whole patches of "
                f"{patch_size}x{patch_size} pixels; use --image-size {sizes}"
            )

    def _flag(self, option: str) -> str:
        """The flag that sets model option ``option``, or where it comes from."""
        for flag, spec in self.model_flags.items():
            if spec.option == option:
                return flag
        return f"the preset's {option}"

    def build_data(self, settings: TrainingSettings) -> RecipeData:
        from .images import ImageBatches, ImageExamples, image_processor, image_splits

        options = settings.options
        self.check_image_size(options)
        image_size = options.image_size
        source = options.dataset
        num_train = options.num_train_images
        num_eval = options.num_eval_images
        for flag, value in (("--num-train-images", num_train), ("--num-eval-images", num_eval)):
            if value is not None and value < 1:
                raise ValueError(f"{flag} must be at least 1, got {value}")
        if source is None:  # the shapes are drawn: the preset says how many
            if image_size < MIN_SHAPES_SIZE:
                raise ValueError(
                    f"--image-size {image_size} is too small to draw shapes in; use at least "
                    f"{MIN_SHAPES_SIZE}"
                )
            num_train = num_train or getattr(options, "train_images", self.default_train_images)
            num_eval = num_eval or getattr(options, "eval_images", self.default_eval_images)
        splits = image_splits(
            source,
            image_size,
            num_train=num_train,
            num_eval=num_eval,
            eval_fraction=options.eval_fraction,
            seed=settings.seed,
        )
        # On unless the flag or the preset turns it off (a very short run learns faster without).
        augment = options.augment is not False
        train = ImageExamples(splits.train, image_size, augment=augment)
        held_out = ImageExamples(splits.held_out, image_size)
        classes = ", ".join(splits.class_names)
        return RecipeData(
            train=train,
            eval=held_out,
            collate=ImageBatches(self.image_mean, self.image_std),
            processor=image_processor(image_size, self.image_mean, self.image_std),
            description=(
                f"{splits.source}: {len(train):,} training and {len(held_out):,} held-out "
                f"images of {image_size}x{image_size} pixels, {len(splits.class_names)} classes "
                f"({classes}); training images "
                + (
                    "augmented (shifts, flips, brightness and contrast)"
                    if augment
                    else "as they are"
                )
            ),
        )

    def count_items(self, batch: dict[str, Any]) -> int:
        return batch["pixel_values"].shape[0]


class ImageClassificationRecipe(ImageRecipe):
    """An image classifier: one label per image (the shape, or the subfolder of a folder).
    The model's config gets the class names (``label_config``), so that
    ``pipeline("image-classification")`` answers with them. Metrics on the held-out images:
    ``eval_loss``, top-1 ``accuracy``, and ``baseline_accuracy``, the accuracy of always
    answering the most frequent training class (chance, for balanced classes). At the end a
    confusion matrix of the final evaluation, ``confusion_matrix.png``. Model packages
    subclass it and write ``build_model``, a ``...ForImageClassification`` given
    ``**self.label_config(data)``.
    """

    auto_class: ClassVar[str] = "AutoModelForImageClassification"
    pipeline_tag: ClassVar[str | None] = "image-classification"
    output_files: ClassVar[tuple[str, ...]] = (CONFUSION_MATRIX_FILE,)

    def build_data(self, settings: TrainingSettings) -> RecipeData:
        data = super().build_data(settings)
        counts = Counter(data.train.labels())
        self.most_frequent_class = counts.most_common(1)[0][0]
        return data

    @staticmethod
    def label_config(data: RecipeData) -> dict[str, Any]:
        """The config fields of a classifier of ``data``'s classes: ``id2label`` and
        ``label2id`` (which also set ``num_labels``)."""
        names = data.train.class_names
        return {
            "id2label": dict(enumerate(names)),
            "label2id": {name: index for index, name in enumerate(names)},
        }

    def eval_step(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        output = model(**batch)
        return {
            "loss": output.loss,
            "predictions": output.logits.argmax(-1),
            "labels": batch["labels"],
        }

    def eval_metrics(self, results: EvalResults) -> dict[str, float]:
        predictions, labels = results.gathered["predictions"], results.gathered["labels"]
        return {
            "eval_loss": results.means["loss"],
            "accuracy": float((predictions == labels).float().mean()),
            "baseline_accuracy": float((labels == self.most_frequent_class).float().mean()),
        }

    def finish(
        self,
        model: PreTrainedModel,
        data: RecipeData,
        output_dir: Path,
        evaluation: Evaluation,
    ) -> dict[str, Path]:
        """The confusion matrix of the final evaluation, ``confusion_matrix.png``."""
        from .reporting import plot_confusion_matrix

        names = data.eval.class_names
        counts = confusion_counts(
            evaluation.results.gathered["labels"].tolist(),
            evaluation.results.gathered["predictions"].tolist(),
            len(names),
        )
        correct = sum(counts[index][index] for index in range(len(names)))
        total = sum(map(sum, counts))
        path = output_dir / CONFUSION_MATRIX_FILE
        plot_confusion_matrix(
            counts,
            names,
            path,
            f"{self.name}: {correct}/{total} held-out images right ({correct / total:.1%})",
        )
        return {"confusion matrix": path}


def confusion_counts(labels: list[int], predictions: list[int], classes: int) -> list[list[int]]:
    """``counts[true][predicted]``: how many examples of each class got each prediction."""
    counts = [[0] * classes for _ in range(classes)]
    for true, predicted in zip(labels, predictions, strict=True):
        counts[true][predicted] += 1
    return counts
