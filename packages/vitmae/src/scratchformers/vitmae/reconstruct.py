"""Draw what a saved masked autoencoder makes of images, one PNG grid per image:

    python -m scratchformers.vitmae.reconstruct outputs/vitmae-tiny            # 6 fresh shapes
    python -m scratchformers.vitmae.reconstruct outputs/vitmae-tiny cat.jpg dog.png
    python -m scratchformers.vitmae.reconstruct facebook-vit-mae-base/ photo.jpg --out grids/

The folder is one that ``ViTMAEForPreTraining.from_pretrained`` loads (a scratchformers run,
or a directory written by transformers' ViTMAE) with its image processor beside it. Each grid
shows the original, the masked input, the reconstruction, and the reconstruction with the
visible patches pasted back (see :mod:`scratchformers.vitmae.reconstruction`); ``overview.png``
stacks them. They go into ``--out`` (default ``./reconstructions``), which must not hold PNGs
of the same names unless ``--overwrite`` says to replace them. Without image files it draws the generated shapes the recipes train on (that
needs the ``train`` extra).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROCESSOR_FILE = "preprocessor_config.json"


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scratchformers.vitmae.reconstruct",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model_dir", type=Path, help="a saved ViTMAE folder")
    parser.add_argument("images", nargs="*", type=Path, help="image files (default: shapes)")
    parser.add_argument(
        "--num", type=int, default=6, help="generated shapes to draw without image files"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("reconstructions"),
        help="folder of the PNGs (default: ./reconstructions)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace PNGs of the same names in --out"
    )
    parser.add_argument("--seed", type=int, default=0, help="which patches are hidden")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    try:
        paths = run(arguments)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    print(f"overview: {paths[0].parent / 'overview.png'}")
    return 0


def run(arguments: argparse.Namespace) -> list[Path]:
    """Load the model and its processor, read or draw the images, write the grids."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor

    from .modeling import ViTMAEForPreTraining
    from .reconstruction import save_reconstructions

    model_dir: Path = arguments.model_dir
    if not model_dir.is_dir():
        raise ValueError(f"{model_dir} is not a folder (give a saved ViTMAE folder)")
    if not (model_dir / PROCESSOR_FILE).is_file():
        raise ValueError(
            f"{model_dir} has no {PROCESSOR_FILE}: the image processor says how the model "
            "saw images (their size, mean and std); save one beside the model"
        )
    for image in arguments.images:
        if not image.is_file():
            raise ValueError(f"{image} is not a file")
    if arguments.num < 1:
        raise ValueError(f"--num must be at least 1, got {arguments.num}")
    model = ViTMAEForPreTraining.from_pretrained(model_dir).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    if arguments.images:
        images = [Image.open(path).convert("RGB") for path in arguments.images]
        names = [path.stem for path in arguments.images]
    else:
        images, names = _shapes(arguments.num, model.config.image_size, arguments.seed), None
    pixels = processor(images, return_tensors="pt")["pixel_values"]
    noise = torch.rand(
        pixels.shape[0],
        model.vit.embeddings.patch_embeddings.num_patches,
        generator=torch.Generator().manual_seed(arguments.seed),
    )
    out: Path = arguments.out
    stems = names or [f"sample_{index + 1}" for index in range(len(images))]
    taken = [out / f"{stem}.png" for stem in [*stems, "overview"] if (out / f"{stem}.png").exists()]
    if taken and not arguments.overwrite:
        raise ValueError(
            f"{taken[0]} already exists; pass --overwrite to replace it, or another --out"
        )
    return save_reconstructions(
        model, pixels, processor.image_mean, processor.image_std, out, names=stems, noise=noise
    )


def _shapes(count: int, image_size: int, seed: int) -> list:
    try:
        from scratchformers.training import shapes_dataset
    except ImportError as error:
        raise ValueError(
            "without image files this draws generated shapes, which need "
            "scratchformers-vitmae[train]; give image files instead"
        ) from error
    return list(shapes_dataset(count, image_size, seed=f"reconstruct {seed}")["image"])


if __name__ == "__main__":
    sys.exit(main())
