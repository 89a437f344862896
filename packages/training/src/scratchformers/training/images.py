"""Image data helpers every image recipe shares.

Where the images come from (:func:`image_splits`): the generated shapes of
:mod:`scratchformers.training.shapes` by default, or a folder of the user's images with one
subfolder per class, read by ``datasets``' own ``imagefolder`` loader, so that both arrive as
the same kind of ``datasets.Dataset`` (an ``image`` column and a ``label`` ``ClassLabel``).
How the model sees them (:class:`ImageExamples`, :class:`ImageBatches`): RGB, resized to the
model's square size as the saved image processor (:func:`image_processor`) resizes them, scaled
to [0, 1], augmented in the training set only, normalised with the processor's mean and std.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .console import status
from .data import IMAGE_FOLDER_PREFIX, DataError
from .shapes import shapes_dataset

# The resampling of ViT's image processor: the training images are resized the same way as the
# images a pipeline later feeds the model.
RESAMPLE = Image.Resampling.BILINEAR
# Split names that ``imagefolder`` recognises in a folder's layout (train/, validation/,
# test/), in the order they are preferred as the held-out set.
HELD_OUT_SPLITS = ("validation", "test")
# Image sets up to this size (as uint8 pixels at the model's size) are decoded once, up front.
PRELOAD_BYTES = 1 << 30
# The one class of images without labels (masked-image pretraining takes them).
UNLABELLED = "(no label)"


@dataclass
class ImageSplits:
    """What :func:`image_splits` returns: the training and held-out images, the class names
    (by label id), and where the images came from."""

    train: datasets.Dataset
    held_out: datasets.Dataset
    class_names: list[str]
    source: str

    @property
    def labelled(self) -> bool:
        """Whether the images have classes (two or more), not :data:`UNLABELLED` alone."""
        return len(self.class_names) >= 2


def image_processor(image_size: int, mean: Sequence[float], std: Sequence[float]) -> Any:
    """transformers' ViT image processor for square ``image_size`` images: resize (bilinear),
    scale to [0, 1], normalise with ``mean`` and ``std``.

    The PIL backend, whose resize is the one the training images went through (see
    :class:`ImageExamples`); it saves as ``ViTImageProcessor``, which ``AutoImageProcessor``
    and ``pipeline("image-classification")`` load with whichever backend is installed.
    """
    from transformers.models.vit import ViTImageProcessorPil

    return ViTImageProcessorPil(
        size={"height": image_size, "width": image_size},
        resample=RESAMPLE,
        image_mean=list(mean),
        image_std=list(std),
    )


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as RGB: greyscale, palette, CMYK, 16-bit and the rest converted, and a
    transparent background made white (dropping the alpha channel would leave whatever colour
    the transparent pixels happen to hold)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        # Wide greyscale: scale to 8 bits first, which convert("RGB") would only clip.
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(pixels.max()), 1.0)
        grey = np.clip(pixels / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    return image.convert("RGB")


def image_splits(
    source: str | None,
    image_size: int,
    *,
    num_train: int | None,
    num_eval: int | None,
    eval_fraction: float = 0.1,
    seed: int = 0,
    eval_source: str | None = None,
    image_column: str = "image",
    label_column: str = "label",
    require_labels: bool = True,
) -> ImageSplits:
    """The training and held-out images of ``source``.

    ``source`` is ``None`` (generated shapes: ``num_train`` training images drawn with
    ``seed``, and ``num_eval`` held-out ones drawn with a seed of their own, so the held-out set
    does not change with the size of the training set), or a folder (``imagefolder:<dir>`` or
    the plain path) of images with one subfolder per class. A folder's held-out set is its own
    ``validation/`` or ``test/`` split if it has one, else ``eval_fraction`` of its images
    (stratified by class, seeded); ``num_train`` and ``num_eval`` then cap the counts
    (a seeded sample). Fails with a :class:`DataError` naming the folder and the problem.

    ``source`` may also be a table (a ``.csv``/``.jsonl``/... file whose ``image_column``
    holds paths relative to the file's folder, a local folder of such files as a Hugging Face
    dataset repository lays them out, or a dataset id), read by :func:`image_table`; and
    ``eval_source`` (``--eval-dataset``, any of these formats or an image folder) the held-out
    images. Without it a table's held-out rows are ``eval_fraction`` of it, chosen by the hash
    of each row's content (:func:`~scratchformers.training.tables.held_out_by_content`). The
    class names are the training labels', sorted (numerically when they are all numbers).
    ``require_labels=False`` (masked-image pretraining) also takes images without classes: a
    folder without class subfolders, a table without ``label_column``; their one class is
    :data:`UNLABELLED`.
    """
    if source is None:
        if eval_source is not None:
            raise DataError("--eval-dataset needs --dataset: the generated shapes hold their own")
        if num_train is None or num_eval is None:
            raise ValueError("generated shapes need num_train and num_eval")
        status(f"drawing {num_train:,} + {num_eval:,} shape images of {image_size}x{image_size}")
        train = shapes_dataset(num_train, image_size, seed=seed)
        held_out = shapes_dataset(num_eval, image_size, seed=f"held-out {seed}")
        return ImageSplits(
            train, held_out, train.features["label"].names, "generated shapes (offline default)"
        )
    folder = Path(source.removeprefix(IMAGE_FOLDER_PREFIX)).expanduser()
    if eval_source is not None or not _is_image_folder(source):
        return _table_splits(
            source,
            eval_source,
            num_train=num_train,
            num_eval=num_eval,
            eval_fraction=eval_fraction,
            seed=seed,
            image_column=image_column,
            label_column=label_column,
            require_labels=require_labels,
        )
    status(f"reading the images in {folder}")
    splits = load_image_folder(folder, require_labels=require_labels)
    train = splits["train"]
    held_out_name = next((name for name in HELD_OUT_SPLITS if name in splits), None)
    if held_out_name is not None:
        held_out = splits[held_out_name]
        origin = f"the folder {folder} (its {held_out_name} split held out)"
    else:
        train, held_out = _split(train, eval_fraction, seed, folder)
        origin = f"the folder {folder} ({eval_fraction:.0%} held out)"
    # Shuffled once, with a fixed seed: the loop cuts the held-out set to whole batches, and a
    # folder's images come class by class, so the cut would otherwise drop the last class.
    held_out = held_out.shuffle(seed=seed, keep_in_memory=True)
    if num_eval is not None:
        held_out = held_out.select(range(min(num_eval, len(held_out))))
    if num_train is not None and num_train < len(train):
        train = train.shuffle(seed=seed, keep_in_memory=True).select(range(num_train))
    return ImageSplits(train, held_out, train.features["label"].names, origin)


def image_files(folder: Path) -> list[Path]:
    """The files under ``folder`` that ``imagefolder`` reads as images, by their suffix."""
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    suffixes = {suffix.lower() for suffix in ImageFolder.EXTENSIONS}
    return sorted(
        path for path in folder.rglob("*") if path.is_file() and path.suffix.lower() in suffixes
    )


def load_image_folder(
    folder: str | os.PathLike[str], *, require_labels: bool = True, flag: str = "--dataset"
) -> datasets.DatasetDict:
    """A folder of images with one subfolder per class (``cats/1.png``, ``dogs/2.jpg``; or
    ``train/cats/...`` and ``test/cats/...``), as ``datasets.load_dataset("imagefolder")``
    reads it: splits of ``image`` and ``label`` (a ``ClassLabel`` named by the subfolders).

    Checked first, with a :class:`DataError` naming the folder (and ``flag``): it exists,
    holds images, and they fall into at least two classes, unless ``require_labels`` is
    False: images in fewer than two classes then have the one label :data:`UNLABELLED`.
    """
    folder = Path(folder)
    if not folder.exists():
        raise DataError(
            f"{flag} {folder} does not exist (give a folder of images with one subfolder "
            "per class, or leave --dataset out for the generated shapes)"
        )
    if not folder.is_dir():
        raise DataError(
            f"{flag} {folder} is a file; give a folder of images with one subfolder per class"
        )
    files = image_files(folder)
    if not files:
        raise DataError(f"{flag} {folder} holds no images (.png, .jpg, .webp, ... files)")
    classes = Counter(path.parent.name for path in files)
    if len(classes) < 2 and not require_labels:
        return _unlabelled_folder(folder, flag)
    if len(classes) < 2:
        (name,) = classes
        where = "directly in it" if files[0].parent == folder else f"in its subfolder {name!r}"
        images = "its only image is" if len(files) == 1 else f"all {len(files)} of its images are"
        raise DataError(
            f"{flag} {folder}: {images} {where}, which is one class; an image classifier "
            "needs two or more, one subfolder per class (cats/, dogs/, ...)"
        )
    try:
        # drop_labels=False: the labels are the subfolders' names even when imagefolder would
        # not infer them (images at different depths).
        splits = datasets.load_dataset("imagefolder", data_dir=str(folder), drop_labels=False)
    except Exception as error:
        raise DataError(f"{flag} {folder} could not be read as images ({error})") from error
    for name, split in splits.items():
        if "label" not in split.column_names:
            raise DataError(
                f"{flag} {folder}: its {name} images have no labels (a metadata file without "
                "a label column?); put each class in a subfolder of its own"
            )
        if not isinstance(split.features["label"], datasets.ClassLabel):
            splits[name] = split.class_encode_column("label")
    if "train" not in splits:
        raise DataError(
            f"{flag} {folder} has the splits {sorted(splits)} but no train split; "
            "rename its training folder train/"
        )
    return splits


def _split(
    dataset: datasets.Dataset, fraction: float, seed: int, folder: Path
) -> tuple[datasets.Dataset, datasets.Dataset]:
    if not 0 < fraction < 1:
        raise DataError(f"--eval-fraction must be between 0 and 1, got {fraction}")
    if len(dataset) < 2:
        raise DataError(
            f"--dataset {folder} holds {len(dataset)} image, too few to hold any out for evaluation"
        )
    # Every class in both parts, in proportion, unless a class has one image: it cannot be in
    # both, and datasets refuses to stratify.
    stratify = min(Counter(dataset["label"]).values()) >= 2
    parts = dataset.train_test_split(
        test_size=fraction, seed=seed, stratify_by_column="label" if stratify else None
    )
    return parts["train"], parts["test"]


def _is_image_folder(source: str) -> bool:
    """Whether ``--dataset`` names a folder of images (``imagefolder:`` says so outright): a
    folder with images, or with neither images nor tables (refused as such). A folder of
    tables without images (csv, jsonl, parquet files, as a Hub dataset repository holds
    them) is read as a dataset, and what is no local path at all as a Hub dataset id."""
    from .tables import TABLE_FORMATS

    if source.startswith(IMAGE_FOLDER_PREFIX):
        return True
    path = Path(source).expanduser()
    if not path.is_dir():
        return False
    if image_files(path):
        return True
    return not any(
        file.suffix.lower() in TABLE_FORMATS for file in path.rglob("*") if file.is_file()
    )


def _unlabelled_folder(folder: Path, flag: str) -> datasets.DatasetDict:
    """A folder of images without classes, each labelled :data:`UNLABELLED`."""
    try:
        splits = datasets.load_dataset("imagefolder", data_dir=str(folder), drop_labels=True)
    except Exception as error:
        raise DataError(f"{flag} {folder} could not be read as images ({error})") from error
    if "train" not in splits:
        raise DataError(
            f"{flag} {folder} has the splits {sorted(splits)} but no train split; "
            "rename its training folder train/"
        )
    labels = datasets.ClassLabel(names=[UNLABELLED])
    return datasets.DatasetDict(
        {
            name: split.select_columns(["image"])
            .add_column("label", [0] * len(split))
            .cast_column("label", labels)
            for name, split in splits.items()
        }
    )


def image_table(
    source: str,
    flag: str = "--dataset",
    *,
    image_column: str = "image",
    label_column: str = "label",
    require_labels: bool = True,
) -> datasets.Dataset:
    """The images and labels ``source`` names, as a table of three columns: ``image``
    (undecoded ``datasets.Image``), ``label`` (the label as text, or :data:`UNLABELLED`) and
    ``key`` (what the image column said, for splitting by content wherever the files lie).

    ``source`` is a folder of images with one subfolder per class, or a table that
    :func:`~scratchformers.training.tables.read_table` reads (a ``.csv``/``.jsonl``/... file,
    a folder of such files, a dataset id: its train split, or for ``--eval-dataset`` its
    validation split, else its test split, else its train split). Its ``image_column`` holds images (a
    ``datasets.Image`` column) or paths, relative to the file's folder (or the dataset
    folder); its ``label_column`` strings or integers. Checked before any work, each with one
    :class:`DataError` naming ``flag``: a missing column (naming those there are), a row
    without label, and an image file that is missing or not an image (naming file and row,
    counted from 1 after the header).
    """
    from .tables import read_table, require_columns

    path = Path(source.removeprefix(IMAGE_FOLDER_PREFIX)).expanduser()
    if _is_image_folder(source):
        folder = load_image_folder(path, require_labels=require_labels, flag=flag)["train"]
        names = folder.features["label"].names
        files = folder.cast_column("image", datasets.Image(decode=False))
        images = files["image"]
        keys = [str(Path(image["path"]).relative_to(path)) for image in images]
        labels = [names[label] for label in folder["label"]]
        return _table(images, labels, keys)
    # A dataset id (or folder) held out whole: its validation split, else its test split,
    # else the one split it has.
    splits = ("validation", "test", "train") if flag == "--eval-dataset" else ("train",)
    for split in splits:
        try:
            table = read_table(source, flag, split=split)
            break
        except DataError:
            if path.is_file() and _holds_no_rows(path):  # datasets' own error says "no data"
                raise DataError(f"{flag} {source} holds no rows") from None
            if path.is_file() or split == splits[-1]:
                raise
    columns = {"--image-column": image_column}
    if require_labels or label_column in table.column_names:
        columns["--label-column"] = label_column
    require_columns(table, columns, source, flag)
    if isinstance(table.features[image_column], datasets.Image):
        images = table.cast_column(image_column, datasets.Image(decode=False))[image_column]
        keys = [image.get("path") or _digest(image.get("bytes")) for image in images]
    else:
        base = path.parent if path.is_file() else path if path.is_dir() else Path.cwd()
        keys = [str(value) for value in table[image_column]]
        images = [_image_file(base, value, row, flag, source) for row, value in enumerate(keys, 1)]
    if label_column not in table.column_names:
        labels = [UNLABELLED] * len(table)
    else:
        feature = table.features[label_column]
        raw = table[label_column]
        for row, value in enumerate(raw, 1):
            if value is None or value == "":
                raise DataError(
                    f"{flag} {source} row {row} has no {label_column!r} (--label-column)"
                )
        if isinstance(feature, datasets.ClassLabel):
            labels = [feature.int2str(int(value)) for value in raw]
        else:
            labels = [str(value) for value in raw]
    return _table(images, labels, keys)


def _holds_no_rows(path: Path) -> bool:
    """Whether a csv/tsv file holds a header at most, or a json/jsonl file nothing."""
    header = 1 if path.suffix.lower() in (".csv", ".tsv") else 0
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError):
        return False
    return len(lines) <= header


def _table(images: list[Any], labels: list[str], keys: list[str]) -> datasets.Dataset:
    features = datasets.Features(
        {
            "image": datasets.Image(decode=False),
            "label": datasets.Value("string"),
            "key": datasets.Value("string"),
        }
    )
    return datasets.Dataset.from_dict(
        {"image": images, "label": labels, "key": keys}, features=features
    )


def _digest(data: bytes | None) -> str:
    import hashlib

    return hashlib.sha256(data or b"").hexdigest()


def _image_file(base: Path, value: str, row: int, flag: str, source: str) -> str:
    """The path of row ``row``'s image, checked to exist and to open as an image (its header
    only: cheap, and a broken body is named when the image is decoded)."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base / path
    try:
        with Image.open(path):
            pass
    except (OSError, ValueError, SyntaxError) as error:
        reason = "no such file" if not path.exists() else f"not an image: {error}"
        raise DataError(
            f"{flag} {source} row {row}: could not read the image {value!r} ({path}; {reason})"
        ) from error
    return str(path)


def _class_names(labels: Sequence[str]) -> list[str]:
    """The distinct labels, sorted: as numbers when they all are (2 before 10), else as text."""
    names = set(labels)
    if all(name.lstrip("-").isdigit() for name in names):
        return sorted(names, key=int)
    return sorted(names)


def _table_splits(
    source: str,
    eval_source: str | None,
    *,
    num_train: int | None,
    num_eval: int | None,
    eval_fraction: float,
    seed: int,
    image_column: str,
    label_column: str,
    require_labels: bool,
) -> ImageSplits:
    """:func:`image_splits` of a table, or of anything with an ``--eval-dataset``."""
    from .tables import held_out_by_content

    read = {
        "image_column": image_column,
        "label_column": label_column,
        "require_labels": require_labels,
    }
    status(f"reading the images of {source}")
    train = image_table(source, "--dataset", **read)
    if require_labels and len(set(train["label"])) < 2:
        raise DataError(
            f"--dataset {source}: its {label_column!r} column (--label-column) holds one class, "
            f"{train[0]['label']!r}; an image classifier needs two or more"
        )
    if eval_source is not None:
        held_out = image_table(eval_source, "--eval-dataset", **read)
        origin = f"{source}, held out: {eval_source}"
    else:
        train, held_out = held_out_by_content(train, eval_fraction, ["key", "label"], source)
        origin = f"{source} ({eval_fraction:.0%} held out by content)"
    names = _class_names(train["label"])
    labelled = names != [UNLABELLED]
    unknown = sorted(set(held_out["label"]) - set(names))
    if unknown and labelled:
        raise DataError(
            f"--eval-dataset {eval_source or source} has labels the training images do not: "
            f"{unknown[:8]}"
        )
    classes = datasets.ClassLabel(names=names)

    def encode(table: datasets.Dataset) -> datasets.Dataset:
        if not labelled:  # held-out labels of unlabelled training images say nothing
            table = table.map(lambda _: {"label": UNLABELLED}, keep_in_memory=True)
        return table.select_columns(["image", "label"]).cast_column("label", classes)

    train, held_out = encode(train), encode(held_out)
    held_out = held_out.shuffle(seed=seed, keep_in_memory=True)
    if num_eval is not None:
        held_out = held_out.select(range(min(num_eval, len(held_out))))
    if num_train is not None and num_train < len(train):
        train = train.shuffle(seed=seed, keep_in_memory=True).select(range(num_train))
    status(
        f"read {origin}: {len(train):,} training and {len(held_out):,} held-out images; "
        f"columns {image_column}"
        + (f", {label_column}; {len(names)} labels ({', '.join(names[:20])})" if labelled else "")
        + ("" if labelled else "; no labels")
    )
    return ImageSplits(train, held_out, names, origin)


def decoded(image: Image.Image | dict[str, Any]) -> Image.Image:
    """An image of an undecoded ``datasets.Image`` column (``{"path", "bytes"}``) opened as
    ``datasets`` opens it (EXIF orientation applied); a file that cannot be read as an image
    raises a :class:`DataError` that names it. An image already open is returned as it is."""
    if isinstance(image, Image.Image):
        return image
    try:
        return datasets.Image().decode_example(image)
    except (OSError, ValueError, SyntaxError) as error:  # Pillow's errors for broken files
        name = image.get("path") or "an image stored as bytes"
        raise DataError(f"could not read {name} as an image ({error})") from error


class ImageExamples(torch.utils.data.Dataset):
    """The images and labels of a ``datasets.Dataset``, as the model reads them.

    Each example is ``{"pixels": uint8 tensor (3, image_size, image_size), "label": int}``:
    the image converted to RGB (:func:`to_rgb`) and resized to ``image_size`` square with the
    image processor's resampling (an image of that size already is left as it is). Examples of
    a training set (``augment``) also say ``"augment": True``, for :class:`ImageBatches`.
    Images that fit in ``preload_bytes`` are decoded once, up front (every epoch then reads
    tensors); larger sets are decoded as they are read.
    """

    def __init__(
        self,
        dataset: datasets.Dataset,
        image_size: int,
        *,
        augment: bool = False,
        preload_bytes: int = PRELOAD_BYTES,
        resample: int | None = None,
    ) -> None:
        missing = {"image", "label"} - set(dataset.column_names)
        if missing:
            raise DataError(
                f"the images need the columns image and label; {sorted(missing)} missing "
                f"(columns: {dataset.column_names})"
            )
        self.dataset = dataset.select_columns(["image", "label"])
        # Read undecoded and decoded here rather than by datasets, so that a file Pillow
        # cannot read is named.
        self._files = self.dataset
        if isinstance(self.dataset.features["image"], datasets.Image):
            self._files = self.dataset.cast_column("image", datasets.Image(decode=False))
        self.class_names: list[str] = list(dataset.features["label"].names)
        self.image_size = image_size
        # The resampling of the image processor saved with the model (PIL's numbering, as
        # transformers' processors keep it): bilinear, ViT's, unless a checkpoint's says else.
        self.resample = RESAMPLE if resample is None else Image.Resampling(int(resample))
        self.augment = augment
        self._labels: list[int] = list(self.dataset["label"])
        self._pixels: torch.Tensor | None = None
        if len(dataset) * 3 * image_size**2 <= preload_bytes:
            self._pixels = torch.stack([self.pixels(decoded(row["image"])) for row in self._files])

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self._pixels is not None:
            pixels = self._pixels[index]
        else:
            pixels = self.pixels(decoded(self._files[index]["image"]))
        example = {"pixels": pixels, "label": self._labels[index]}
        if self.augment:
            example["augment"] = True
        return example

    def labels(self) -> list[int]:
        """Every example's label, in order."""
        return list(self._labels)

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """``image`` as the model's input before scaling: RGB, resized, uint8 (3, H, W)."""
        image = to_rgb(image)
        size = (self.image_size, self.image_size)
        if image.size != size:
            image = image.resize(size, self.resample)
        return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()


class ImageBatches:
    """Stacks :class:`ImageExamples` into a batch of ``pixel_values`` and ``labels``: the
    pixels scaled to [0, 1] and normalised with the image processor's ``mean`` and ``std``, as
    the processor does.

    A batch of training examples (they say ``"augment": True``) is augmented first, each image
    on its own: shifted by up to ``max_shift`` of its side (the edge pixels repeated), flipped
    left to right half the time, its brightness and contrast scaled by up to ``jitter``. The
    draws come from torch's global RNG, which the loop seeds and checkpoints, so a resumed run
    sees the same images; held-out images are never changed.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        max_shift: float = 0.125,
        flip: bool = True,
        jitter: float = 0.15,
    ) -> None:
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)
        self.max_shift = max_shift
        self.flip = flip
        self.jitter = jitter

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pixels = torch.stack([example["pixels"] for example in examples]).float() / 255.0
        if examples[0].get("augment"):
            pixels = self.augmented(pixels)
        labels = torch.tensor([example["label"] for example in examples], dtype=torch.long)
        return {"pixel_values": (pixels - self.mean) / self.std, "labels": labels}

    def augmented(self, pixels: torch.Tensor) -> torch.Tensor:
        """A batch of images in [0, 1], (batch, 3, height, width), randomly changed."""
        count, _, height, width = pixels.shape
        shift = round(self.max_shift * min(height, width))
        if shift:
            padded = F.pad(pixels, (shift, shift, shift, shift), mode="replicate")
            top, left = torch.randint(0, 2 * shift + 1, (2, count, 1))
            rows = (top + torch.arange(height))[:, None, :, None]
            columns = (left + torch.arange(width))[:, None, None, :]
            images = torch.arange(count)[:, None, None, None]
            channels = torch.arange(pixels.shape[1])[None, :, None, None]
            pixels = padded[images, channels, rows, columns]
        if self.flip:
            flipped = torch.rand(count) < 0.5
            pixels = torch.where(flipped[:, None, None, None], pixels.flip(-1), pixels)
        if self.jitter:
            brightness, contrast = 1 + (torch.rand(2, count, 1, 1, 1) * 2 - 1) * self.jitter
            mean = pixels.mean(dim=(1, 2, 3), keepdim=True)
            pixels = ((pixels - mean) * contrast + mean) * brightness
        return pixels.clamp(0.0, 1.0)
