"""The vit training recipe: a Vision Transformer image classifier trained from scratch, or
fine-tuned from a checkpoint (``--init-from``: ours, transformers' or timm's).

    scratchformers train vit [--preset tiny] [--dataset FOLDER|FILE|ID] [--init-from CKPT] [...]
    accelerate launch -m scratchformers.vit.train [...]

The images (generated shapes by default, offline; or a folder with one subfolder per class, a
csv/jsonl table of paths and labels, a dataset id), the checkpoint's image size and processor,
their augmentation, the image processor saved with the model, top-1 accuracy against the
most-frequent-class baseline and the confusion matrix come from the shared
``ImageClassificationRecipe``. This module is what ``--help`` imports, so the model package
is imported in ``build_model`` only.

``scratchformers export --format onnx`` writes ``model.onnx`` (:func:`onnx_graphs`):
``pixel_values`` -> class ``logits``, for onnxruntime.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scratchformers.training.onnx_export import OnnxGraph, image_example, onnx_format
from scratchformers.training.recipe import ExportFormat, ModelFlag, Preset, RecipeData
from scratchformers.training.vision import ImageClassificationRecipe, saved_preprocessing

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from scratchformers.training.pretrained import Pretrained
    from scratchformers.training.settings import TrainingSettings
    from scratchformers.vit import ViTForImageClassification


class ViTRecipe(ImageClassificationRecipe):
    """ViT (class token, pre-norm layers, linear classifier) on the shared image recipe."""

    name = "vit"
    description = (
        "Train a Vision Transformer image classifier from scratch, or fine-tune one "
        "(--init-from) on your images."
    )
    init_from_formats = (
        "a folder written by save_pretrained (this project's vit, transformers' ViT or "
        "ViTForImageClassification, or a masked autoencoder's encoder), timm's Hub folder "
        "(config.json + model.safetensors of a VisionTransformer), or a Hub id of one "
        "(google/vit-base-patch16-224, timm/vit_small_patch16_224.augreg_in21k); the images "
        "are then the checkpoint's size unless --image-size says another (the positions are "
        "resized once), and its classifier starts fresh when the classes differ"
    )
    model_flags = {
        **ImageClassificationRecipe.model_flags,
        "--patch-size": ModelFlag("patch_size", "side of the square patches, in pixels"),
        "--width": ModelFlag("hidden_size", "hidden size of every layer"),
        "--depth": ModelFlag("num_hidden_layers", "number of encoder layers"),
        "--heads": ModelFlag("num_attention_heads", "attention heads (must divide --width)"),
        "--pooling": ModelFlag(
            "pooling", "what the classifier reads: cls (the class token) or mean", str
        ),
    }
    presets = {
        # 92.6% of held-out shapes right (chance: 16.6%) in about 4 minutes on 2 CPU cores;
        # patches of 4 pixels (36 of them) learn the shapes far faster than 6-pixel ones.
        "tiny": Preset.scheduled(
            steps=2000,
            batch=64,
            lr=1e-3,
            warmup=30,
            eval_every=250,
            image_size=24,
            patch_size=4,
            hidden_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            pooling="cls",
            train_images=20000,
            eval_images=1000,
        ),
        "small": Preset.scheduled(
            steps=4000,
            batch=128,
            lr=1e-3,
            warmup=200,
            eval_every=400,
            image_size=32,
            patch_size=4,
            hidden_size=192,
            num_hidden_layers=6,
            num_attention_heads=3,
            pooling="cls",
            train_images=40000,
            eval_images=2000,
        ),
        "base": Preset.scheduled(
            steps=50000,
            batch=256,
            lr=5e-4,
            warmup=5000,
            eval_every=2000,
            image_size=224,
            patch_size=16,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            pooling="cls",
            train_images=100000,
            eval_images=5000,
        ),
    }

    def build_model(
        self, settings: TrainingSettings, data: RecipeData
    ) -> ViTForImageClassification:
        from scratchformers.vit import ViTConfig, ViTForImageClassification

        if self.checkpoint is not None:
            return self.fine_tuned(data)
        options = settings.options
        config = ViTConfig(
            image_size=options.image_size,
            patch_size=options.patch_size,
            num_channels=3,
            hidden_size=options.hidden_size,
            num_hidden_layers=options.num_hidden_layers,
            num_attention_heads=options.num_attention_heads,
            intermediate_size=4 * options.hidden_size,
            # The original ViT's and timm's epsilon, not transformers' default 1e-12: timm's
            # ViT cannot be told another, and with it --format timm gives the same logits.
            layer_norm_eps=1e-6,
            pooling=options.pooling,
            **self.label_config(data),
        )
        return ViTForImageClassification(config)

    def fine_tuned(self, data: RecipeData) -> ViTForImageClassification:
        """The model of the ``--init-from`` checkpoint (read by ``build_data``), with a fresh
        classifier when the data's classes are not the checkpoint's, at the data's image
        size (the positions resized once), in train mode; the run says what it loaded."""
        from scratchformers.training.console import status
        from scratchformers.training.pretrained import load_pretrained
        from scratchformers.vit import ViTForImageClassification, with_image_size

        checkpoint = self.checkpoint
        assert checkpoint is not None
        if checkpoint.format == "timm":
            pretrained = self.from_timm_folder(data)
        else:
            pretrained = load_pretrained(
                ViTForImageClassification,
                checkpoint.source,
                new_heads=("classifier",),
                **self.label_config(data),
            )
        if checkpoint.image_size != self.image_size:
            pretrained.model = with_image_size(pretrained.model, self.image_size)
            status(
                f"position table resized from {checkpoint.image_size}x{checkpoint.image_size} "
                f"to the data's {self.image_size}x{self.image_size} pixels (bicubic, once)"
            )
        self.pretrained = pretrained
        return pretrained.model.train()

    def from_timm_folder(self, data: RecipeData) -> Pretrained:
        """A timm hub folder (config.json + model.safetensors) as our ViT: ``from_timm`` with
        what the config says (head count, pooling, class names), and a fresh classifier when
        the data's classes are not the folder's (or it has no head)."""
        import torch
        from safetensors.torch import load_file

        from scratchformers.training.console import status
        from scratchformers.training.pretrained import Pretrained, PretrainedError
        from scratchformers.vit import from_timm, options_from_timm_config

        checkpoint = self.checkpoint
        assert checkpoint is not None
        source, architecture = checkpoint.source, checkpoint.config.get("architecture")
        labels = self.label_config(data)
        try:
            options = options_from_timm_config(checkpoint.config)
            state = load_file(checkpoint.path / "model.safetensors")
            headless = "head.weight" not in state
            if headless:  # saved with num_classes=0: a placeholder head, replaced below
                width = state["patch_embed.proj.weight"].shape[0]
                state["head.weight"] = torch.zeros(len(labels["id2label"]), width)
                state["head.bias"] = torch.zeros(len(labels["id2label"]))
                options.pop("id2label", None)
            model = from_timm(state, **options)
        except (ValueError, KeyError) as error:
            raise PretrainedError(
                f"--init-from {source} (a timm {architecture} folder) does not load as "
                f"ViTForImageClassification: {error}"
            ) from error
        fresh = []
        if headless or options.get("id2label") != labels["id2label"]:
            model.config.id2label = labels["id2label"]
            model.config.label2id = labels["label2id"]
            model.num_labels = len(labels["id2label"])
            model.classifier = torch.nn.Linear(model.config.hidden_size, model.num_labels)
            model._init_weights(model.classifier)
            fresh = ["classifier.weight", "classifier.bias"]
        pretrained = Pretrained(
            model=model.train(),
            source=source,
            path=checkpoint.path,
            format=f"a timm {architecture} folder",
            fresh=fresh,
        )
        status(f"starting from {pretrained.describe()}")
        if fresh:
            status(
                f"warning: the classifier of {source} is not for this data's "
                f"{model.num_labels} classes and starts from its initial values: classifier"
            )
        return pretrained

    def export_to_transformers(self, model: PreTrainedModel, out_dir: Path) -> Path:
        """transformers' ``ViTForImageClassification``, with the same outputs (class-token
        pooling only: transformers has no mean-pooled ViT)."""
        from scratchformers.vit import export_to_transformers

        return export_to_transformers(model, out_dir)

    def export_formats(self) -> dict[str, ExportFormat]:
        """transformers' ViT (the default), timm's ``VisionTransformer``, and ONNX:
        ``model.onnx`` (see :func:`onnx_graphs`)."""
        return {
            **super().export_formats(),
            "timm": ExportFormat(
                write=self.export_to_timm,
                usage=self.timm_usage,
                help="timm's VisionTransformer: config.json and model.safetensors as timm "
                "saves them for the Hub",
            ),
            "onnx": onnx_format(
                onnx_graphs, onnx_info, help="model.onnx: class logits, for onnxruntime"
            ),
        }

    def export_to_timm(self, model: PreTrainedModel, out_dir: Path) -> Path:
        """timm's Hub folder of the model (``export_to_timm``), normalised as the image
        processor saved beside the trained model says."""
        from scratchformers.vit import export_to_timm

        return export_to_timm(model, out_dir, **saved_preprocessing(Path(model.name_or_path)))  # type: ignore[arg-type]

    def timm_usage(self, out: Path) -> list[str]:
        """How to load a folder written by ``export_to_timm``."""
        config = json.loads((out / "config.json").read_text())
        return [
            f"exported to {out} for timm's VisionTransformer; load it with",
            f'  timm.create_model("local-dir:{out}", pretrained=True)',
            "or by name, with config.json's model_args:",
            f'  timm.create_model("{config["architecture"]}", pretrained=True, '
            f'pretrained_cfg_overlay=dict(file="{out / "model.safetensors"}", '
            f"num_classes={config['num_classes']}), **model_args)",
        ]


def onnx_graphs(model: PreTrainedModel) -> list[OnnxGraph]:
    """A ViT classifier as one ONNX graph: ``pixel_values`` ``(batch, channels, height,
    width)`` at the model's image size (as its image processor makes them), the batch
    dynamic, -> ``logits`` ``(batch, num_labels)``."""
    config = model.config
    height, width = _pair(config.image_size)

    def forward(pixel_values: Any) -> dict[str, Any]:
        return {"logits": model(pixel_values=pixel_values).logits}

    def example(batch: int, length: int) -> dict[str, Any]:
        return image_example(batch, config.num_channels, (height, width))

    return [
        OnnxGraph(
            name="model",
            module=model,
            forward=forward,
            example=example,
            dynamic_axes={"pixel_values": {0: "batch"}},
            description="class logits, named by config.id2label",
        )
    ]


def onnx_info(model: PreTrainedModel) -> dict[str, Any]:
    """The class names by logit index, and the image size the graph takes."""
    config = model.config
    return {
        "id2label": {str(k): v for k, v in config.id2label.items()},
        "image_size": list(_pair(config.image_size)),
    }


def _pair(size: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    """``(height, width)`` of an ``image_size`` field (an int is square)."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
