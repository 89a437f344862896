"""Recipes for models that read images: :class:`ImageRecipe` (the images, their size, the image
processor and augmentation) and :class:`ImageClassificationRecipe` (labels, accuracy, a
confusion matrix). Model packages subclass them and write ``build_model``.

Like :mod:`scratchformers.training.recipe`, this module is what ``--help`` imports: torch,
transformers and the image helpers of :mod:`scratchformers.training.images` come in inside
the hooks.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .recipe import EvalResults, Evaluation, ModelFlag, Recipe, RecipeData

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from .settings import TrainingSettings

CONFUSION_MATRIX_FILE = "confusion_matrix.png"
MIN_SHAPES_SIZE = 8  # pixels: the generated shapes need that many to be told apart at all
# timm's normalisation when a checkpoint's pretrained_cfg does not say (ImageNet's).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ImageCheckpoint:
    """What ``--init-from`` names, read before the data: the images it was trained on (size,
    patch size, normalisation) decide how the data is prepared.

    Attributes:
        source: the checkpoint as the user named it (a path or a Hub id).
        path: where it lies on this machine.
        config: its config.json.
        format: ``"timm"``, ``"scratchformers"`` or ``"transformers"``.
        image_size: the side of the square images it was trained on.
        patch_size: the side of its square patches.
        image_mean: the normalisation of its image processor (timm: ``pretrained_cfg``).
        image_std: likewise.
        processor: its own image processor (preprocessor_config.json), or None.
        label_names: its classifier's class names by label id (``id2label``; timm's
            ``label_names``), or None.
    """

    source: str
    path: Path
    config: dict[str, Any]
    format: str
    image_size: int
    patch_size: int
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    processor: Any = None
    label_names: list[str] | None = None


def read_image_checkpoint(
    source: str,
    default_mean: tuple[float, ...] = (0.5, 0.5, 0.5),
    default_std: tuple[float, ...] = (0.5, 0.5, 0.5),
) -> ImageCheckpoint:
    """The :class:`ImageCheckpoint` ``source`` names (a folder or a Hub id), without loading
    its weights: a missing checkpoint stops the run before the data is read. A folder of
    ours or transformers' gives its config's sizes and its processor's normalisation
    (``default_mean`` / ``default_std`` without a processor); timm's folder its weights'
    sizes (read from the safetensors header) and ``pretrained_cfg``'s mean and std."""
    from .pretrained import (
        PretrainedError,
        checkpoint_config,
        checkpoint_format,
        checkpoint_path,
        load_checkpoint_processor,
    )

    path = checkpoint_path(source)
    config = checkpoint_config(path)
    kind = checkpoint_format(config)
    if kind == "timm":
        from safetensors import safe_open

        weights = path / "model.safetensors"
        if not weights.is_file():
            raise PretrainedError(
                f"--init-from {source} (a timm folder) holds no model.safetensors"
            )
        with safe_open(weights, "pt") as tensors:
            patch = tensors.get_slice("patch_embed.proj.weight").get_shape()[-1]
            rows = tensors.get_slice("pos_embed").get_shape()[1]
            class_token = "cls_token" in tensors.keys()  # noqa: SIM118 (safe_open has no "in")
        # A square grid, with or without a row for the class token (see position_layout).
        side = next(
            (
                side
                for slots in ((1, 0) if class_token else (0,))
                if (side := math.isqrt(rows - slots)) ** 2 == rows - slots
            ),
            None,
        )
        if side is None:
            raise PretrainedError(
                f"--init-from {source}: its position table ({rows} rows) is not a square grid"
            )
        pretrained_cfg = config.get("pretrained_cfg") or {}
        return ImageCheckpoint(
            source=source,
            path=path,
            config=config,
            format=kind,
            image_size=side * patch,
            patch_size=patch,
            image_mean=tuple(pretrained_cfg.get("mean", IMAGENET_MEAN)),
            image_std=tuple(pretrained_cfg.get("std", IMAGENET_STD)),
            label_names=config.get("label_names"),
        )
    sizes = []
    for name in ("image_size", "patch_size"):
        value = config.get(name, 224 if name == "image_size" else 16)
        if not isinstance(value, int):
            height, width = value
            if height != width:
                raise PretrainedError(
                    f"--init-from {source} has {name}={value}; this recipe trains square images"
                )
            value = height
        sizes.append(int(value))
    processor = load_checkpoint_processor(path, "AutoImageProcessor")
    mean = tuple(processor.image_mean) if processor is not None else default_mean
    std = tuple(processor.image_std) if processor is not None else default_std
    id2label = config.get("id2label") or {}
    label_names = [id2label.get(str(index)) for index in range(len(id2label))]
    return ImageCheckpoint(
        source,
        path,
        config,
        kind,
        sizes[0],
        sizes[1],
        mean,
        std,
        processor,
        label_names if all(label_names) and label_names else None,
    )


def in_class_order(dataset: Any, names: list[str]) -> Any:
    """``dataset`` (a ``label`` ``ClassLabel`` column) with its label ids renumbered to follow
    ``names``, the same class names in another order."""
    import datasets

    old = dataset.features["label"].names
    new_ids = [names.index(name) for name in old]
    features = dataset.features.copy()
    features["label"] = datasets.ClassLabel(names=names)
    return dataset.map(
        lambda batch: {"label": [new_ids[label] for label in batch["label"]]},
        batched=True,
        features=features,
        keep_in_memory=True,
    )


def resized_processor(processor: Any, image_size: int) -> Any:
    """A checkpoint's image processor set to resize to ``image_size`` square (a copy): the
    trained folder's processor then feeds the model the images it was trained on."""
    import copy

    processor = copy.deepcopy(processor)
    processor.size = {"height": image_size, "width": image_size}
    return processor


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
        "imagefolder:FOLDER says the same; its validation/ or test/ split is held out if it "
        "has one); a .csv/.tsv/.jsonl/.parquet file with --image-column (paths relative to "
        "the file's folder) and --label-column (strings or integers); or a Hugging Face "
        "dataset id (or a local folder laid out as one); default: generated shapes, offline"
    )
    default_eval_fraction: ClassVar[float] = 0.1
    # Whether the images must have classes (two or more): a classifier's do, masked-image
    # pretraining takes images without (and probes with the classes when there are some).
    needs_labels: ClassVar[bool] = False
    # Set by build_data / build_model: the --init-from checkpoint, the loaded model's account.
    checkpoint: ImageCheckpoint | None = None
    pretrained: Any = None
    # Generated shapes when the preset does not say how many.
    default_train_images: ClassVar[int] = 5000
    default_eval_images: ClassVar[int] = 1000

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        data = parser.add_argument_group("image data")
        data.add_argument(
            "--image-column",
            default="image",
            help="the column of a table (--dataset FILE or dataset id) that holds the images "
            "or their paths, relative to the file's folder (default: image)",
        )
        data.add_argument(
            "--label-column",
            default="label",
            help="the column of a table that holds the labels, strings or integers "
            "(default: label)",
        )
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

    def check_image_size(
        self,
        options: argparse.Namespace,
        image_size: int | None = None,
        patch_size: int | None = None,
    ) -> None:
        """Raise a ``ValueError`` naming the flags when the image size cannot work: it must be
        positive and, for a model that cuts images into patches, a multiple of the patch size
        (a ViT would otherwise leave the pixels past the last whole patch unread).
        ``image_size`` / ``patch_size`` default to the options' (a checkpoint's patch size
        comes in here)."""
        image_size = options.image_size if image_size is None else image_size
        if patch_size is None:
            patch_size = getattr(options, "patch_size", None)
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

    def image_size_given(self, settings: TrainingSettings) -> bool:
        """Whether ``--image-size`` asked for another size than the preset's: with
        ``--init-from`` the images are otherwise the checkpoint's size. (The settings keep
        the value, not whether it came from the flag: the preset's own size counts as not
        given.)"""
        preset = self.presets[settings.preset].model
        return settings.options.image_size != preset.get("image_size")

    def build_data(self, settings: TrainingSettings) -> RecipeData:
        from .data import DataError
        from .images import ImageBatches, ImageExamples, image_processor, image_splits

        options = settings.options
        # The checkpoint first: a missing one stops the run before the data is read, and its
        # image size and normalisation say how to prepare the images.
        self.checkpoint = None
        if getattr(options, "init_from", None):
            self.checkpoint = read_image_checkpoint(
                options.init_from, self.image_mean, self.image_std
            )
        checkpoint = self.checkpoint
        image_size = options.image_size
        patch_size = getattr(options, "patch_size", None)
        if checkpoint is not None:
            patch_size = checkpoint.patch_size
            if not self.image_size_given(settings):
                image_size = checkpoint.image_size
            # The instance's normalisation, for the collate, the processor and finish().
            self.image_mean, self.image_std = checkpoint.image_mean, checkpoint.image_std
        self.check_image_size(options, image_size, patch_size)
        self.image_size = image_size
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
            eval_source=getattr(options, "eval_dataset", None),
            image_column=getattr(options, "image_column", "image"),
            label_column=getattr(options, "label_column", "label"),
            require_labels=self.needs_labels,
        )
        for name, split in (("training", splits.train), ("held-out", splits.held_out)):
            if len(split) == 0:
                raise DataError(f"--dataset {source}: the {name} split holds no images")
        self.labelled = splits.labelled
        theirs = checkpoint.label_names if checkpoint is not None else None
        if theirs and sorted(theirs) == sorted(splits.class_names) and splits.labelled:
            # The checkpoint's classes in another order: number them as it does, so that its
            # classifier is kept rather than started afresh.
            splits.train = in_class_order(splits.train, theirs)
            splits.held_out = in_class_order(splits.held_out, theirs)
            splits.class_names = list(theirs)
        processor = image_processor(image_size, self.image_mean, self.image_std)
        if checkpoint is not None and checkpoint.processor is not None:
            processor = resized_processor(checkpoint.processor, image_size)
        # The images are resized as the saved processor resizes them (its resampling).
        resample = getattr(processor, "resample", None)
        # On unless the flag or the preset turns it off (a very short run learns faster without).
        augment = options.augment is not False
        train = ImageExamples(splits.train, image_size, augment=augment, resample=resample)
        held_out = ImageExamples(splits.held_out, image_size, resample=resample)
        classes = (
            f"{len(splits.class_names)} classes ({', '.join(splits.class_names)})"
            if splits.labelled
            else "no labels"
        )
        return RecipeData(
            train=train,
            eval=held_out,
            collate=ImageBatches(self.image_mean, self.image_std),
            processor=processor,
            description=(
                f"{splits.source}: {len(train):,} training and {len(held_out):,} held-out "
                f"images of {image_size}x{image_size} pixels, {classes}; training images "
                + (
                    "augmented (shifts, flips, brightness and contrast)"
                    if augment
                    else "as they are"
                )
            ),
        )

    def count_items(self, batch: dict[str, Any]) -> int:
        return batch["pixel_values"].shape[0]

    def card_sections(self, output_dir: Path, evaluation: Evaluation) -> list[str]:
        """The checkpoint the run started from, when it started from one."""
        pretrained = getattr(self, "pretrained", None)
        if pretrained is None:
            return []
        return ["## Starting point", "", f"Loaded from {pretrained.describe()}.", ""]


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
    needs_labels: ClassVar[bool] = True
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


# transformers' image processors name their resize filter with PIL's codes; timm with words.
_INTERPOLATIONS = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def saved_preprocessing(model_dir: Path) -> dict[str, Any]:
    """The normalisation and resize filter of the image processor saved in ``model_dir`` (the
    image recipes save one with every model), as the keywords ``image_mean``, ``image_std``
    and ``interpolation`` that the exports for timm and open_clip take; none without one."""
    path = model_dir / "preprocessor_config.json"
    if not path.is_file():
        return {}
    processor = json.loads(path.read_text())
    options: dict[str, Any] = {}
    if processor.get("image_mean") is not None:
        options["image_mean"] = processor["image_mean"]
    if processor.get("image_std") is not None:
        options["image_std"] = processor["image_std"]
    if processor.get("resample") in _INTERPOLATIONS:
        options["interpolation"] = _INTERPOLATIONS[processor["resample"]]
    return options
