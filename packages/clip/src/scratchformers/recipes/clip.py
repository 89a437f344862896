"""The clip training recipe: CLIP fine-tuned from a pretrained checkpoint on the user's own
image-text pairs, or trained from scratch; by default (offline) on captioned shapes, evaluated
zero-shot on colour and shape pairs it never saw together.

    scratchformers train clip --init-from openai/clip-vit-base-patch32 --dataset pairs.csv
    scratchformers train clip [--preset tiny] [...]
    accelerate launch -m scratchformers.clip.train [...]

``--init-from`` reads a folder of ours or transformers' CLIP (a Hub id or a local folder) or
an OpenAI / open_clip weights file (``scratchformers.clip.starting_point``); the model's shape
and processor are the checkpoint's. ``--dataset`` reads a csv / jsonl table of image paths and
captions, or a folder of images with same-named .txt captions
(``scratchformers.clip.captioned_files``); its held-out metrics are the contrastive loss,
image-to-text and text-to-image recall@1 and @5 over the whole held-out set, and zero-shot
accuracy over ``--zero-shot-labels``.

The data (``scratchformers.clip.captioned_shapes``) is generated offline: the vit recipe's
shapes, captioned from their attributes, with six colour and shape pairs held out of training.
A word-level tokenizer is trained on the training captions, and saved with CLIP's image
processor as one ``CLIPProcessor``. The loss is CLIP's symmetric contrastive loss over the
global batch: under several processes each one's embeddings are gathered, with their
gradients, so every process's examples are the negatives of every other's.

Held-out metrics of the generated data: ``zero_shot_accuracy`` (each held-out image classified among all 36 pairs,
the class embeddings averaged over one template per size and position; chance 1/36), the
colour and the shape it picks, and ``retrieval_accuracy`` (each image finds its own caption
in its batch), and the recalls. At the end ``zero_shot.json`` and ``similarity.png``, the image-text
similarities of held-out images and their captions. This module is what ``--help`` imports, so
torch and the model package come in inside the hooks.

``scratchformers export --format onnx`` writes the two towers (:func:`onnx_graphs`):
``text_model.onnx`` (``input_ids``, ``attention_mask`` -> ``text_embeds``) and
``vision_model.onnx`` (``pixel_values`` -> ``image_embeds``), normalised, with the
temperature in ``onnx.json``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from scratchformers.training.onnx_export import (
    OnnxGraph,
    image_example,
    onnx_format,
    token_example,
)
from scratchformers.training.recipe import (
    EvalResults,
    Evaluation,
    ExportFormat,
    ModelFlag,
    Preset,
    Recipe,
    RecipeData,
    example_counts,
)
from scratchformers.training.rundir import write_json
from scratchformers.training.vision import saved_preprocessing

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from scratchformers.clip import CLIPModel
    from scratchformers.clip.starting_point import StartingPoint
    from scratchformers.training.settings import TrainingSettings

# --openai-activation's choices (scratchformers.clip.starting_point.ACTIVATIONS; repeated here,
# since --help imports no torch).
ACTIVATIONS = ("auto", "quick_gelu", "gelu")
ZERO_SHOT_FILE = "zero_shot.json"
SIMILARITY_PLOT = "similarity.png"
SIMILARITY_SAMPLES = 10  # held-out images (and their captions) in the similarity plot
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's cap on the temperature: logits at most 100 x cosine


def gathered_contrastive_loss(
    text_embeds: torch.Tensor, image_embeds: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """CLIP's loss for this process's pairs against every process's: its texts (rows) against
    all images, and its images against all texts, the i-th of each a pair.

    The embeddings are normalised, ``(batch, dim)``; ``logit_scale`` is the temperature
    (already exponentiated), capped at 100 as CLIP caps it. Every process's embeddings are
    gathered with their gradients, so that averaging the processes' gradients (what
    data-parallel training does) gives the gradient of the loss on the whole global batch; on
    one process this is CLIP's loss on the batch.
    """
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from scratchformers.training import gather_with_gradients

    all_texts, all_images = gather_with_gradients(text_embeds), gather_with_gradients(image_embeds)
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    targets = rank * len(text_embeds) + torch.arange(len(text_embeds), device=text_embeds.device)
    scale = logit_scale.clamp(max=math.exp(MAX_LOGIT_SCALE))
    text_to_image = F.cross_entropy(scale * text_embeds @ all_images.T, targets)
    image_to_text = F.cross_entropy(scale * image_embeds @ all_texts.T, targets)
    return (text_to_image + image_to_text) / 2


def _group(parser: argparse.ArgumentParser, title: str) -> Any:
    """The parser's argument group ``title`` (the shared flags' "starting point" and "data"),
    so that the recipe's flags are listed with them in --help; a new group if there is none."""
    for group in parser._action_groups:
        if group.title == title:
            return group
    return parser.add_argument_group(title)


class CLIPRecipe(Recipe):
    """CLIP (a ViT image tower and a causal text tower) on captioned shapes."""

    name = "clip"
    description = "Train CLIP from scratch on captioned shapes, evaluated zero-shot."
    auto_class = "AutoModelForZeroShotImageClassification"
    processor_auto_class = "AutoProcessor"
    pipeline_tag = "zero-shot-image-classification"
    item_unit: ClassVar[str] = "image-text pairs"
    dataset_formats: ClassVar[str] = (
        "a .csv / .tsv / .jsonl / .parquet table (or a Hugging Face dataset id) with an image "
        "column of paths relative to the file's folder and a caption column "
        "(--image-column, --caption-column), or a folder of images each with a same-named .txt "
        "caption beside it (default: generated captioned shapes, offline)"
    )
    # Recall over the held-out pairs is noisy below a few hundred: hold out more than 5%.
    default_eval_fraction: ClassVar[float] = 0.1
    init_from_formats: ClassVar[str] = (
        "a CLIP folder written by save_pretrained (this project's, or transformers' such as "
        "openai/clip-vit-base-patch32) or its Hub id, or an OpenAI / open_clip weights file "
        "(.safetensors, plain .pt / .bin state dict; see --openai-activation), or an open_clip "
        "Hub folder; the model's shape comes from it (the shape flags are not used), the "
        "CLIPProcessor from its folder or --processor"
    )
    output_files: ClassVar[tuple[str, ...]] = (ZERO_SHOT_FILE, SIMILARITY_PLOT)
    model_flags = {
        "--image-size": ModelFlag("image_size", "side of the square images, in pixels"),
        "--patch-size": ModelFlag("patch_size", "side of the square patches, in pixels"),
        "--width": ModelFlag("vision_hidden_size", "hidden size of the image tower"),
        "--depth": ModelFlag("vision_num_hidden_layers", "layers of the image tower"),
        "--heads": ModelFlag("vision_num_attention_heads", "attention heads of the image tower"),
        "--text-width": ModelFlag("text_hidden_size", "hidden size of the text tower"),
        "--text-depth": ModelFlag("text_num_hidden_layers", "layers of the text tower"),
        "--text-heads": ModelFlag("text_num_attention_heads", "attention heads of the text tower"),
        "--projection-dim": ModelFlag("projection_dim", "width of the shared embedding space"),
    }
    presets = {
        # Zero-shot on the held-out pairs peaks early: 28% (chance 2.8%) after 300 steps of
        # 128, 23% after 600, while retrieval of the training kind keeps improving.
        "tiny": Preset.scheduled(
            steps=400,
            batch=128,
            lr=2e-3,
            warmup=50,
            eval_every=100,
            image_size=24,
            patch_size=4,
            vision_hidden_size=64,
            vision_num_hidden_layers=3,
            vision_num_attention_heads=4,
            text_hidden_size=64,
            text_num_hidden_layers=2,
            text_num_attention_heads=4,
            projection_dim=64,
            train_images=10000,
            eval_images=1024,
        ),
        "small": Preset.scheduled(
            steps=6000,
            batch=256,
            lr=1e-3,
            warmup=300,
            eval_every=500,
            image_size=32,
            patch_size=4,
            vision_hidden_size=192,
            vision_num_hidden_layers=6,
            vision_num_attention_heads=3,
            text_hidden_size=128,
            text_num_hidden_layers=4,
            text_num_attention_heads=4,
            projection_dim=128,
            train_images=60000,
            eval_images=2048,
        ),
        # OpenAI's ViT-B/32 shape (its text tower's 77 positions; our vocabulary).
        "base": Preset.scheduled(
            steps=50000,
            batch=512,
            lr=5e-4,
            warmup=2000,
            eval_every=2000,
            image_size=224,
            patch_size=32,
            vision_hidden_size=768,
            vision_num_hidden_layers=12,
            vision_num_attention_heads=12,
            text_hidden_size=512,
            text_num_hidden_layers=12,
            text_num_attention_heads=8,
            projection_dim=512,
            train_images=200000,
            eval_images=5000,
        ),
    }

    # What build_data sets up: the --init-from checkpoint and the zero-shot classes of the
    # user's data (none for the generated shapes, which have their own).
    start: StartingPoint | None = None
    zero_shot_classes: tuple[str, ...] = ()
    zero_shot_template: str = "a photo of a {}."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        start = _group(parser, "starting point")
        start.add_argument(
            "--processor",
            default=None,
            metavar="FOLDER_OR_ID",
            help="the CLIPProcessor (tokenizer and image processor) of the --init-from "
            "checkpoint, when it is not saved with it: an OpenAI / open_clip file's, say "
            "openai/clip-vit-base-patch32 (default: the one in the checkpoint's folder)",
        )
        start.add_argument(
            "--openai-activation",
            choices=ACTIVATIONS,
            default="auto",
            help="the MLP activation of an OpenAI-layout --init-from file, which its tensors "
            "cannot tell: quick_gelu for OpenAI's weights (and open_clip's -quickgelu models), "
            "gelu for LAION's open_clip ones. auto: the quick_gelu of the open_clip_config.json "
            "beside the file, else quick_gelu (default: auto)",
        )
        data = _group(parser, "data")
        data.add_argument(
            "--image-column",
            default="image",
            help="--dataset's column of image paths, relative to the file's folder "
            "(default: image)",
        )
        data.add_argument(
            "--caption-column",
            default="caption",
            help="--dataset's column of captions (default: caption)",
        )
        data.add_argument(
            "--zero-shot-labels",
            default=None,
            metavar="NAMES",
            help="comma-separated class names (cat,dog,red car): adds held-out zero-shot "
            "accuracy, each image classified among them with --zero-shot-template. An image's "
            "class is its --label-column value if given, else the one class name its caption "
            "mentions (whole words, any case); images whose caption names none or several are "
            "left out of the accuracy",
        )
        data.add_argument(
            "--label-column",
            default=None,
            help="--dataset's column holding each image's class, one of --zero-shot-labels "
            "(default: read the class from the caption)",
        )
        data.add_argument(
            "--zero-shot-template",
            default="a photo of a {}.",
            help="the sentence each class name is put in for zero-shot accuracy, {} for the name "
            "(default: 'a photo of a {}.')",
        )
        data.add_argument(
            "--num-train-images",
            type=int,
            default=None,
            metavar="N",
            help="captioned shapes to train on (default: the preset's)",
        )
        data.add_argument(
            "--num-eval-images",
            type=int,
            default=None,
            metavar="N",
            help="held-out shapes, all of colour and shape pairs never trained on "
            "(default: the preset's)",
        )

    def build_data(self, settings: TrainingSettings) -> RecipeData:
        """The checkpoint (``--init-from``, loaded here: its processor tokenizes the data),
        then the user's pairs (``--dataset``) or the generated captioned shapes."""
        options = settings.options
        self.start = None
        if options.zero_shot_labels is not None and not options.dataset:
            raise ValueError(
                "--zero-shot-labels names the classes of --dataset's images; the generated "
                "shapes have their own 36 (leave it out, or give --dataset)"
            )
        if options.eval_dataset and not options.dataset:
            raise ValueError("--eval-dataset is held out from --dataset: give --dataset too")
        self.zero_shot_classes = self._zero_shot_classes(options)
        self.zero_shot_template = options.zero_shot_template
        if options.init_from:
            from scratchformers.clip.starting_point import load_starting_point

            self.start = load_starting_point(
                options.init_from,
                activation=options.openai_activation,
                processor_source=options.processor,
            )
        if options.dataset:
            return self._user_data(settings)
        return self._generated_data(settings)

    @staticmethod
    def _zero_shot_classes(options: argparse.Namespace) -> tuple[str, ...]:
        if options.zero_shot_labels is None:
            if options.label_column:
                raise ValueError(
                    "--label-column names each image's zero-shot class: give the classes with "
                    "--zero-shot-labels too"
                )
            return ()
        names = [name.strip() for name in options.zero_shot_labels.split(",") if name.strip()]
        if len(names) < 2 or len(set(names)) != len(names):
            raise ValueError(
                f"--zero-shot-labels needs two or more different comma-separated class names, "
                f"got {options.zero_shot_labels!r}"
            )
        if options.zero_shot_template.count("{}") != 1:
            raise ValueError(
                "--zero-shot-template needs exactly one {} for the class name, got "
                f"{options.zero_shot_template!r}"
            )
        return tuple(names)

    def _image_processor(self, settings: TrainingSettings) -> Any:
        """The checkpoint's image processor, or a new one at ``--image-size``."""
        from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

        from scratchformers.training.images import image_processor

        if self.start is not None:
            return self.start.processor.image_processor
        image_size, patch_size = settings.options.image_size, settings.options.patch_size
        if image_size < 8 or image_size % patch_size:
            raise ValueError(
                f"--image-size {image_size} must be at least 8 (to draw shapes in) and a "
                f"multiple of --patch-size {patch_size}"
            )
        return image_processor(image_size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)

    def _generated_data(self, settings: TrainingSettings) -> RecipeData:
        from transformers import CLIPProcessor

        from scratchformers.clip import train_caption_tokenizer
        from scratchformers.clip.captioned_shapes import (
            HELD_OUT_PAIRS,
            CaptionBatches,
            CaptionedImages,
            captioned_shapes,
        )
        from scratchformers.training.console import status

        options = settings.options
        images = self._image_processor(settings)
        image_size = (
            options.image_size
            if self.start is None
            else self.start.pretrained.model.config.vision_config.image_size
        )
        counts = example_counts(
            options, {"--num-train-images": "train_images", "--num-eval-images": "eval_images"}
        )
        status(
            f"drawing {counts['train_images']:,} + {counts['eval_images']:,} captioned shapes "
            f"of {image_size}x{image_size}"
        )
        train = captioned_shapes(counts["train_images"], image_size, settings.seed, held_out=False)
        held_out = captioned_shapes(
            counts["eval_images"], image_size, f"held-out {settings.seed}", held_out=True
        )
        if self.start is None:
            status("training the caption tokenizer")
            tokenizer = train_caption_tokenizer(train["caption"], model_max_length=32)
            processor = CLIPProcessor(image_processor=images, tokenizer=tokenizer)
        else:
            processor = self.start.processor
            tokenizer = processor.tokenizer
        self.tokenizer = tokenizer
        pairs = ", ".join(f"{colour} {shape}" for colour, shape in HELD_OUT_PAIRS)
        return RecipeData(
            train=CaptionedImages(train, image_size, tokenizer),
            eval=CaptionedImages(held_out, image_size, tokenizer),
            collate=CaptionBatches(tokenizer, images.image_mean, images.image_std),
            processor=processor,
            description=self._started_from()
            + (
                f"generated captioned shapes (offline default): {len(train):,} training and "
                f"{len(held_out):,} held-out images of {image_size}x{image_size} pixels with "
                f'captions such as "{train["caption"][0]}"; the held-out images show only '
                f"the colour and shape pairs training never shows together ({pairs})"
            ),
        )

    def _started_from(self) -> str:
        return "" if self.start is None else f"fine-tuned from {self.start.pretrained.describe()}; "

    def _user_data(self, settings: TrainingSettings) -> RecipeData:
        from transformers import CLIPProcessor

        from scratchformers.clip import train_caption_tokenizer
        from scratchformers.clip.captioned_files import (
            NO_CLASS,
            CaptionedFileBatches,
            CaptionedFiles,
            caption_classes,
            captioned_splits,
            label_classes,
        )
        from scratchformers.training.console import status
        from scratchformers.training.data import DataError

        options = settings.options
        classes = self.zero_shot_classes
        label_column = options.label_column if classes else None
        train, held_out, origin = captioned_splits(options, label_column=label_column)
        images = self._image_processor(settings)
        if self.start is None:
            status("training the caption tokenizer")
            # CLIP's 77 positions: the user's captions are longer than the shapes'.
            tokenizer = train_caption_tokenizer(train["caption"], model_max_length=77)
            processor = CLIPProcessor(image_processor=images, tokenizer=tokenizer)
            max_length = tokenizer.model_max_length
        else:
            processor = self.start.processor
            tokenizer = processor.tokenizer
            positions = self.start.pretrained.model.config.text_config.max_position_embeddings
            max_length = min(tokenizer.model_max_length, positions)
        self.tokenizer = tokenizer
        held_out_flag = "--eval-dataset" if options.eval_dataset else "--dataset"
        held_out_source = options.eval_dataset or options.dataset
        labels = None
        if classes:
            if label_column:
                labels = label_classes(held_out, classes, held_out_flag, held_out_source)
            else:
                labels = caption_classes(held_out["caption"], classes)
            known = sum(label != NO_CLASS for label in labels)
            if not known:
                raise DataError(
                    f"--zero-shot-labels: no held-out caption of {held_out_source} mentions exactly "
                    f"one of {', '.join(classes)}; name the classes as the captions do, or give "
                    "--label-column"
                )
            status(
                f"zero-shot: {known:,} of {len(held_out):,} held-out images have a class among "
                f"{len(classes)} ({'their ' + label_column if label_column else 'from the caption'})"
            )
        status(f"reading and processing {len(train) + len(held_out):,} images")
        train_set = CaptionedFiles(
            train, images, tokenizer, max_length, flag="--dataset", source=options.dataset
        )
        eval_set = CaptionedFiles(
            held_out,
            images,
            tokenizer,
            max_length,
            flag=held_out_flag,
            source=held_out_source,
            zero_shot_labels=labels,
        )
        size = "x".join(str(side) for side in train_set[0]["pixel_values"].shape[-2:])
        zero_shot = f"; zero-shot classes: {', '.join(classes)}" if classes else ""
        return RecipeData(
            train=train_set,
            eval=eval_set,
            collate=CaptionedFileBatches(tokenizer),
            processor=processor,
            description=self._started_from()
            + (
                f"{origin}: {len(train):,} training and {len(held_out):,} held-out image-text "
                f"pairs, images at {size} pixels, captions such as "
                f'"{train_set.captions[0]}"{zero_shot}'
            ),
        )

    def build_model(self, settings: TrainingSettings, data: RecipeData) -> CLIPModel:
        from scratchformers.clip import CLIPConfig, CLIPModel

        if self.start is not None:
            return self.start.pretrained.model
        options = settings.options
        tokenizer = data.processor.tokenizer
        text = {
            "vocab_size": len(tokenizer),
            "hidden_size": options.text_hidden_size,
            "num_hidden_layers": options.text_num_hidden_layers,
            "num_attention_heads": options.text_num_attention_heads,
            "intermediate_size": 4 * options.text_hidden_size,
            "max_position_embeddings": tokenizer.model_max_length,
            "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
        vision = {
            "image_size": options.image_size,
            "patch_size": options.patch_size,
            "hidden_size": options.vision_hidden_size,
            "num_hidden_layers": options.vision_num_hidden_layers,
            "num_attention_heads": options.vision_num_attention_heads,
            "intermediate_size": 4 * options.vision_hidden_size,
        }
        config = CLIPConfig(
            text_config=text, vision_config=vision, projection_dim=options.projection_dim
        )
        return CLIPModel(config)

    def load_model(self, model_dir: Path, settings: TrainingSettings) -> PreTrainedModel:
        from transformers import AutoProcessor

        self.tokenizer = AutoProcessor.from_pretrained(model_dir).tokenizer
        return super().load_model(model_dir, settings)

    def compute_loss(
        self, model: torch.nn.Module, batch: dict[str, Any], num_items_in_batch: int
    ) -> torch.Tensor:
        outputs = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
        )
        # A mean over this process's pairs, weighed by their share of the step's.
        loss = gathered_contrastive_loss(
            outputs.text_embeds, outputs.image_embeds, outputs.logit_scale
        )
        return loss * (self.count_loss_items(batch) / num_items_in_batch)

    def count_items(self, batch: dict[str, Any]) -> int:
        return batch["pixel_values"].shape[0]

    def eval_step(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        from scratchformers.clip.zero_shot import class_embeddings

        outputs = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
        )
        loss = gathered_contrastive_loss(
            outputs.text_embeds, outputs.image_embeds, outputs.logit_scale
        )
        # The embeddings of every held-out pair, for recall over the whole held-out set.
        kept: dict[str, Any] = {
            "loss": loss,
            "image_embeds": outputs.image_embeds,
            "text_embeds": outputs.text_embeds,
        }
        if "pair" in batch:  # the generated shapes
            from scratchformers.clip.captioned_shapes import CLASS_NAMES, caption_templates

            classes = class_embeddings(model, self._tokenize, CLASS_NAMES, caption_templates())
            own_caption = outputs.logits_per_image.argmax(dim=-1)
            rows = own_caption.new_tensor(range(len(own_caption)))
            kept |= {
                "predicted": (outputs.image_embeds @ classes.T).argmax(dim=-1),
                "pair": batch["pair"],
                "retrieved": (own_caption == rows).float(),
            }
        elif self.zero_shot_classes:
            classes = class_embeddings(
                model, self._tokenize, self.zero_shot_classes, self.zero_shot_template
            )
            kept |= {
                "zero_shot_predicted": (outputs.image_embeds @ classes.T).argmax(dim=-1),
                "zero_shot_label": batch["zero_shot_label"],
                # A scalar, so that eval_metrics knows the chance level from the results alone.
                "zero_shot_classes": loss.new_tensor(float(len(self.zero_shot_classes))),
            }
        return kept

    def _tokenize(self, text: list[str], **kwargs: Any) -> Any:
        """The processor's text half, for ``class_embeddings``."""
        return self.tokenizer(text, **kwargs)

    def eval_metrics(self, results: EvalResults) -> dict[str, float]:
        from scratchformers.clip.retrieval import retrieval_recall

        gathered = results.gathered
        metrics = {"eval_loss": results.means["loss"]}
        if "pair" in gathered:
            from scratchformers.clip.captioned_shapes import CLASS_NAMES

            predicted, pairs = gathered["predicted"], gathered["pair"]
            shapes = len({name.split()[1] for name in CLASS_NAMES})
            metrics |= {
                "zero_shot_accuracy": float((predicted == pairs).float().mean()),
                "zero_shot_chance": 1 / len(CLASS_NAMES),
                "colour_accuracy": float((predicted // shapes == pairs // shapes).float().mean()),
                "shape_accuracy": float((predicted % shapes == pairs % shapes).float().mean()),
                "retrieval_accuracy": float(gathered["retrieved"].mean()),
            }
        if "image_embeds" in gathered:
            metrics |= retrieval_recall(gathered["image_embeds"], gathered["text_embeds"])
        if "zero_shot_label" in gathered:
            labels, predicted = gathered["zero_shot_label"], gathered["zero_shot_predicted"]
            known = labels >= 0  # images whose class is known (see --zero-shot-labels)
            metrics |= {
                "zero_shot_accuracy": float((predicted[known] == labels[known]).float().mean()),
                "zero_shot_chance": 1 / results.means["zero_shot_classes"],
                "zero_shot_images": float(known.sum()),
            }
        return metrics

    def finish(
        self,
        model: PreTrainedModel,
        data: RecipeData,
        output_dir: Path,
        evaluation: Evaluation,
    ) -> dict[str, Path]:
        """``zero_shot.json`` (the final held-out figures and what they mean) and the
        similarity matrix of the first held-out images and their captions."""
        import torch

        from scratchformers.clip.plots import plot_similarity

        model.eval()
        rows = [data.eval[i] for i in range(min(SIMILARITY_SAMPLES, len(data.eval)))]
        batch = {k: v.to(model.device) for k, v in data.collate(rows).items()}
        with torch.no_grad():
            outputs = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                pixel_values=batch["pixel_values"],
            )
        similarity = (outputs.image_embeds @ outputs.text_embeds.T).cpu()
        captions = [data.eval.captions[i] for i in range(len(rows))]
        if "pixels" in rows[0]:  # the generated shapes keep their uint8 pixels
            images = torch.stack([row["pixels"] for row in rows])
        else:  # the processor's normalised pixels, back to [0, 1] for the plot
            processor = data.processor.image_processor
            mean = torch.tensor(processor.image_mean).view(-1, 1, 1)
            std = torch.tensor(processor.image_std).view(-1, 1, 1)
            pixels = torch.stack([row["pixel_values"] for row in rows])
            images = (pixels * std + mean).clamp(0, 1)
        plot_similarity(
            similarity,
            images,
            captions,
            output_dir / SIMILARITY_PLOT,
            f"{self.name}: held-out images against their captions (cosine similarity)",
        )
        summary: dict[str, Any] = {**evaluation.metrics, "eval_images": len(data.eval)}
        if "pixels" in rows[0]:
            from scratchformers.clip.captioned_shapes import CLASS_NAMES, HELD_OUT_PAIRS

            summary |= {
                "held_out_pairs": [" ".join(pair) for pair in HELD_OUT_PAIRS],
                "classes": list(CLASS_NAMES),
                "chance": 1 / len(CLASS_NAMES),
            }
        elif self.zero_shot_classes:
            summary |= {
                "classes": list(self.zero_shot_classes),
                "template": self.zero_shot_template,
                "chance": 1 / len(self.zero_shot_classes),
            }
        write_json(output_dir / ZERO_SHOT_FILE, summary)
        return {"similarity matrix": output_dir / SIMILARITY_PLOT}

    def export_to_transformers(self, model: PreTrainedModel, out_dir: Path) -> Path:
        """transformers' ``CLIPModel``, with the same outputs."""
        from scratchformers.clip import export_to_transformers

        return export_to_transformers(model, out_dir)

    def export_formats(self) -> dict[str, ExportFormat]:
        """transformers' CLIP (the default), open_clip's, and ONNX: one graph per tower (see
        :func:`onnx_graphs`)."""
        return {
            **super().export_formats(),
            "open_clip": ExportFormat(
                write=self.export_to_open_clip,
                usage=self.open_clip_usage,
                help="open_clip's CLIP: open_clip_model.safetensors (OpenAI's layout) and "
                "open_clip_config.json (its shape, text pooling and normalisation), with the "
                "tokenizer",
                copies_processor=True,
            ),
            "onnx": onnx_format(
                onnx_graphs,
                onnx_info,
                help="text_model.onnx and vision_model.onnx: normalised embeddings",
            ),
        }

    def export_to_open_clip(self, model: PreTrainedModel, out_dir: Path) -> Path:
        """open_clip's Hub folder of the model (``export_to_open_clip``), with the tokenizer
        and the normalisation of the processor saved beside the trained model."""
        from transformers import AutoProcessor

        from scratchformers.clip import export_to_open_clip

        model_dir = Path(model.name_or_path)
        return export_to_open_clip(
            model,  # type: ignore[arg-type]
            out_dir,
            tokenizer=AutoProcessor.from_pretrained(model_dir).tokenizer,
            **saved_preprocessing(model_dir),
        )

    def open_clip_usage(self, out: Path) -> list[str]:
        """How to load a folder written by ``export_to_open_clip``."""
        text_cfg = json.loads((out / "open_clip_config.json").read_text())["model_cfg"]["text_cfg"]
        return [
            f"exported to {out} for open_clip's CLIP; load it with",
            f'  model, _, preprocess = open_clip.create_model_and_transforms("local-dir:{out}")',
            f'  tokenizer = open_clip.get_tokenizer("local-dir:{out}")',
            "(open_clip.model.CLIP built by hand needs text_cfg's "
            f'pool_type="{text_cfg["pool_type"]}", eos_id={text_cfg["eos_id"]})',
        ]


def onnx_graphs(model: PreTrainedModel) -> list[OnnxGraph]:
    """CLIP's two towers as two ONNX graphs, each giving normalised embeddings in the shared
    space, so that ``logit_scale * image_embeds @ text_embeds.T`` (``onnx.json`` holds
    ``logit_scale``, already exponentiated) is ``logits_per_image``:

    * ``text_model``: ``input_ids``, ``attention_mask`` ``(batch, sequence)``, padded on the
      right, each text ending in its end-of-text token (the tokenizer adds it) ->
      ``text_embeds`` ``(batch, projection_dim)``;
    * ``vision_model``: ``pixel_values`` ``(batch, channels, height, width)`` at the model's
      image size -> ``image_embeds`` ``(batch, projection_dim)``.

    Both batch axes, and the text's length, are dynamic.
    """
    import torch.nn.functional as F

    text, vision = model.config.text_config, model.config.vision_config

    def text_forward(input_ids: Any, attention_mask: Any) -> dict[str, Any]:
        features = model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return {"text_embeds": F.normalize(features.pooler_output, dim=-1)}

    def text_example(batch: int, length: int) -> dict[str, Any]:
        return token_example(
            text.vocab_size,
            batch,
            length,
            pad_token_id=text.pad_token_id,
            end_token_id=text.eos_token_id,
        )

    def image_forward(pixel_values: Any) -> dict[str, Any]:
        features = model.get_image_features(pixel_values=pixel_values)
        return {"image_embeds": F.normalize(features.pooler_output, dim=-1)}

    def images(batch: int, length: int) -> dict[str, Any]:
        return image_example(batch, vision.num_channels, vision.image_size)

    return [
        OnnxGraph(
            name="text_model",
            module=model,
            forward=text_forward,
            example=text_example,
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
            },
            max_length=text.max_position_embeddings,
            description="normalised text embeddings",
        ),
        OnnxGraph(
            name="vision_model",
            module=model,
            forward=image_forward,
            example=images,
            dynamic_axes={"pixel_values": {0: "batch"}},
            description="normalised image embeddings",
        ),
    ]


def onnx_info(model: PreTrainedModel) -> dict[str, Any]:
    """The temperature that turns the towers' embeddings into CLIP's logits, and the image
    size the vision graph takes."""
    return {
        "logit_scale": float(model.logit_scale.detach().exp()),
        "image_size": model.config.vision_config.image_size,
    }
