"""The vitmae training recipe: masked-autoencoder pretraining of a ViT encoder from scratch.

    scratchformers train vitmae [--preset tiny] [--dataset FOLDER] [...]
    accelerate launch -m scratchformers.vitmae.train [...]

The images (generated shapes by default, offline; or a folder of images), their augmentation
and the image processor saved with the model come from the shared ``ImageRecipe``; the labels
are not trained on. The held-out reconstruction loss hides the same patches at every
evaluation, so that its curve moves only with the model. At the end: a reconstruction grid
per held-out sample (``reconstructions/``, all of them in ``reconstructions.png``), and a linear probe of the frozen encoder against
the same encoder with random weights (``linear_probe.png``, ``linear_probe.json``). This module
is what ``--help`` imports, so torch and the model package come in inside the hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from scratchformers.training.recipe import Evaluation, ModelFlag, Preset, RecipeData
from scratchformers.training.rundir import write_json
from scratchformers.training.vision import ImageRecipe

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    from transformers import PreTrainedModel

    from scratchformers.training.settings import TrainingSettings
    from scratchformers.vitmae import ViTMAEForPreTraining

RECONSTRUCTIONS_DIR = "reconstructions"
RECONSTRUCTIONS_PLOT = "reconstructions.png"  # every sample's grid, one per row
PROBE_PLOT = "linear_probe.png"
PROBE_FILE = "linear_probe.json"
SAMPLES = 6  # held-out images drawn as reconstruction grids
PROBE_TRAIN_IMAGES = 5000  # at most this many training images fit the probe
_EVAL_SEED = 1234  # the masks of the reconstruction grids: the same patches at every run


def true_or_false(value: str) -> bool:
    """A flag's ``true`` / ``false`` (or yes / no, 1 / 0) as a bool."""
    import argparse

    if value.lower() in ("true", "yes", "1"):
        return True
    if value.lower() in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"takes true or false, got {value!r}")


class ViTMAERecipe(ImageRecipe):
    """ViTMAE pretraining: the pixel loss on the hidden patches, for the encoder that
    ``ViTForImageClassification.from_pretrained(output_dir, num_labels=...)`` then takes."""

    name = "vitmae"
    description = (
        "Pretrain a ViT encoder as a masked autoencoder, from scratch or on from a "
        "checkpoint (--init-from)."
    )
    dataset_formats = (
        "a folder of images, with or without one subfolder per class (the linear probe runs "
        "only with classes; imagefolder:FOLDER says the same); a .csv/.tsv/.jsonl/.parquet "
        "file with --image-column (paths relative to the file's folder) and, optionally, "
        "--label-column; or a Hugging Face dataset id; default: generated shapes, offline"
    )
    init_from_formats = (
        "a ViTMAEForPreTraining folder written by save_pretrained (this project's or "
        "transformers') or a Hub id of one (facebook/vit-mae-base); the images are then the "
        "checkpoint's size unless --image-size says another"
    )
    auto_class = "AutoModelForPreTraining"
    output_files: ClassVar[tuple[str, ...]] = (
        RECONSTRUCTIONS_DIR,
        RECONSTRUCTIONS_PLOT,
        PROBE_PLOT,
        PROBE_FILE,
    )
    model_flags = {
        **ImageRecipe.model_flags,
        "--patch-size": ModelFlag("patch_size", "side of the square patches, in pixels"),
        "--width": ModelFlag("hidden_size", "hidden size of the encoder"),
        "--depth": ModelFlag("num_hidden_layers", "number of encoder layers"),
        "--heads": ModelFlag("num_attention_heads", "encoder attention heads"),
        "--decoder-width": ModelFlag("decoder_hidden_size", "hidden size of the decoder"),
        "--decoder-depth": ModelFlag("decoder_num_hidden_layers", "number of decoder layers"),
        "--decoder-heads": ModelFlag("decoder_num_attention_heads", "decoder attention heads"),
        "--mask-ratio": ModelFlag(
            "mask_ratio", "share of each image's patches hidden from the encoder", float
        ),
        "--norm-pix-loss": ModelFlag(
            "norm_pix_loss",
            "true: predict each hidden patch normalised by its own mean and variance (the "
            "paper's choice, which teaches shapes rather than colours); false: its pixels",
            true_or_false,
        ),
    }
    presets = {
        "tiny": Preset.scheduled(
            steps=2000,
            batch=64,
            lr=1.5e-3,
            warmup=100,
            eval_every=250,
            image_size=24,
            patch_size=4,
            hidden_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            decoder_hidden_size=48,
            decoder_num_hidden_layers=2,
            decoder_num_attention_heads=4,
            mask_ratio=0.75,
            norm_pix_loss=False,
            train_images=20000,
            eval_images=1000,
        ),
        "small": Preset.scheduled(
            steps=8000,
            batch=128,
            lr=1.5e-3,
            warmup=400,
            eval_every=500,
            image_size=32,
            patch_size=4,
            hidden_size=192,
            num_hidden_layers=6,
            num_attention_heads=3,
            decoder_hidden_size=128,
            decoder_num_hidden_layers=2,
            decoder_num_attention_heads=4,
            mask_ratio=0.75,
            norm_pix_loss=False,
            train_images=40000,
            eval_images=2000,
        ),
        # ViT-B/16 as the paper pretrains it (its decoder: 512 wide, 8 layers).
        "base": Preset.scheduled(
            steps=100000,
            batch=256,
            lr=1.5e-4,
            warmup=5000,
            eval_every=2000,
            image_size=224,
            patch_size=16,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            decoder_hidden_size=512,
            decoder_num_hidden_layers=8,
            decoder_num_attention_heads=16,
            mask_ratio=0.75,
            norm_pix_loss=False,
            train_images=100000,
            eval_images=5000,
        ),
    }

    def build_model(self, settings: TrainingSettings, data: RecipeData) -> ViTMAEForPreTraining:
        from scratchformers.vitmae import ViTMAEConfig, ViTMAEForPreTraining

        if self.checkpoint is not None:
            return self.pretrained_model()
        options = settings.options
        config = ViTMAEConfig(
            image_size=options.image_size,
            patch_size=options.patch_size,
            num_channels=3,
            hidden_size=options.hidden_size,
            num_hidden_layers=options.num_hidden_layers,
            num_attention_heads=options.num_attention_heads,
            intermediate_size=4 * options.hidden_size,
            decoder_hidden_size=options.decoder_hidden_size,
            decoder_num_hidden_layers=options.decoder_num_hidden_layers,
            decoder_num_attention_heads=options.decoder_num_attention_heads,
            decoder_intermediate_size=4 * options.decoder_hidden_size,
            mask_ratio=options.mask_ratio,
            norm_pix_loss=options.norm_pix_loss,
        )
        return ViTMAEForPreTraining(config)

    def pretrained_model(self) -> ViTMAEForPreTraining:
        """The ``--init-from`` checkpoint (ours or transformers' ViTMAEForPreTraining, read by
        ``build_data``) to go on pretraining on the data, at the data's image size (its fixed
        sin-cos positions computed for the new grid), in train mode."""
        from scratchformers.training.console import status
        from scratchformers.training.pretrained import load_pretrained
        from scratchformers.vit import with_image_size
        from scratchformers.vitmae import ViTMAEForPreTraining

        checkpoint = self.checkpoint
        assert checkpoint is not None
        pretrained = load_pretrained(ViTMAEForPreTraining, checkpoint.source)
        if checkpoint.image_size != self.image_size:
            pretrained.model = with_image_size(pretrained.model, self.image_size)
            status(
                f"positions set from {checkpoint.image_size}x{checkpoint.image_size} to the "
                f"data's {self.image_size}x{self.image_size} pixels (MAE's fixed sin-cos tables)"
            )
        self.pretrained = pretrained
        return pretrained.model.train()

    def compute_loss(
        self, model: torch.nn.Module, batch: dict[str, Any], num_items_in_batch: int
    ) -> torch.Tensor:
        # The labels (the shape, or a folder's class) are for the linear probe only. Every
        # image hides as many patches, so the mean over the images is the mean over patches.
        loss = model(pixel_values=batch["pixel_values"]).loss
        return loss * (self.count_loss_items(batch) / num_items_in_batch)

    def eval_step(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        pixels = batch["pixel_values"]
        noise = held_out_noise(pixels, model.config.patch_size)
        return {"loss": model(pixel_values=pixels, noise=noise).loss}

    def finish(
        self,
        model: PreTrainedModel,
        data: RecipeData,
        output_dir: Path,
        evaluation: Evaluation,
    ) -> dict[str, Path]:
        """Reconstruction grids of the first held-out images, and the linear probe."""
        import torch

        from scratchformers.training.console import status
        from scratchformers.vitmae.reconstruction import save_reconstructions

        pixels, _ = self.pixels_and_labels(data.eval, data.collate, SAMPLES)
        noise = torch.rand(
            pixels.shape[0],
            model.vit.embeddings.patch_embeddings.num_patches,
            generator=torch.Generator().manual_seed(_EVAL_SEED),
        )
        folder = output_dir / RECONSTRUCTIONS_DIR
        save_reconstructions(
            model,
            pixels.to(model.device),
            self.image_mean,
            self.image_std,
            folder,
            noise=noise,
            overview=output_dir / RECONSTRUCTIONS_PLOT,
        )
        files = {
            "reconstructions": output_dir / RECONSTRUCTIONS_PLOT,
            "one grid per sample": folder,
        }
        if not getattr(self, "labelled", True):
            status("no linear probe: the images have no labels")
            return files
        status("probing the frozen encoder with a linear classifier (and a random one)")
        probe = self.probe(model, data)
        write_json(output_dir / PROBE_FILE, probe)
        plot_probe(probe, output_dir / PROBE_PLOT, f"{self.name}: linear probe on the labels")
        status(
            f"linear probe: {probe['pretrained']:.1%} held-out accuracy on the pretrained "
            f"encoder, {probe['random']:.1%} on a random one, {probe['chance']:.1%} by chance"
        )
        return {**files, "linear probe": output_dir / PROBE_PLOT}

    def probe(self, model: ViTMAEForPreTraining, data: RecipeData) -> dict[str, Any]:
        """Held-out accuracy of a linear classifier on the frozen features of ``model``'s
        encoder and of a randomly initialised one of the same shape, with the accuracy of
        always answering the most frequent training class."""
        import torch

        from scratchformers.vitmae import ViTMAEForPreTraining
        from scratchformers.vitmae.probe import image_features, linear_probe

        train_pixels, train_labels = self.pixels_and_labels(
            data.train, data.collate, PROBE_TRAIN_IMAGES
        )
        eval_pixels, eval_labels = self.pixels_and_labels(data.eval, data.collate)
        with torch.random.fork_rng(devices=[]):  # the training RNG stays as it was
            torch.manual_seed(0)
            untrained = ViTMAEForPreTraining(model.config).to(model.device).eval()
        accuracies = {}
        for name, encoder in (("pretrained", model.vit), ("random", untrained.vit)):
            features = image_features(encoder, train_pixels), image_features(encoder, eval_pixels)
            accuracies[name] = linear_probe(features[0], train_labels, features[1], eval_labels)
        most_frequent = torch.bincount(train_labels).argmax()
        return {
            **accuracies,
            "chance": float((eval_labels == most_frequent).float().mean()),
            "train_images": int(train_labels.shape[0]),
            "eval_images": int(eval_labels.shape[0]),
        }

    @staticmethod
    def pixels_and_labels(
        examples: Any, collate: Any, limit: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``limit`` (default: all) ``examples`` as one batch, never augmented."""
        count = len(examples) if limit is None else min(limit, len(examples))
        rows = [examples[index] for index in range(count)]
        batch = collate([{k: v for k, v in row.items() if k != "augment"} for row in rows])
        return batch["pixel_values"], batch["labels"]

    def export_to_transformers(self, model: PreTrainedModel, out_dir: Path) -> Path:
        """transformers' ``ViTMAEForPreTraining``, with the same outputs for the same noise."""
        from scratchformers.vitmae import export_to_transformers

        return export_to_transformers(model, out_dir)


def held_out_noise(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """The masking noise of held-out images, ``(batch, patches)``: each image's seeded by its
    own pixels, so that an image hides the same patches at every evaluation, in any batch, on
    any process, and the held-out loss moves only with the weights. (Drawing from the training's
    random state would give each evaluation other masks, and shift the training's randomness.)"""
    import torch

    patches = (pixels.shape[-2] // patch_size) * (pixels.shape[-1] // patch_size)
    noise = []
    for image in pixels.detach().float().cpu():
        # An order-free integer hash of the image's bits: sums of int64 wrap the same way in
        # any order, on any machine.
        bits = image.contiguous().view(torch.int32).flatten().long()
        seed = int((bits * torch.arange(1, bits.numel() + 1)).sum()) & (2**62 - 1)
        noise.append(torch.rand(patches, generator=torch.Generator().manual_seed(seed)))
    return torch.stack(noise).to(pixels.device)


def plot_probe(probe: dict[str, Any], path: Path, title: str) -> None:
    """The probe's two held-out accuracies as bars, with chance as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(4.5, 3.6), dpi=120)
    names = ["pretrained encoder", "random encoder"]
    values = [probe["pretrained"], probe["random"]]
    bars = axis.bar(names, values, color=["tab:blue", "tab:grey"])
    axis.bar_label(bars, labels=[f"{value:.1%}" for value in values])
    axis.axhline(probe["chance"], color="black", linestyle="--", linewidth=1)
    axis.text(1.45, probe["chance"], "chance", va="bottom", ha="right", fontsize=8)
    axis.set_ylim(0, 1)
    axis.set_ylabel("held-out top-1 accuracy")
    axis.set_title(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
