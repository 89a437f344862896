"""What a masked autoencoder makes of an image, to look at: for each image a strip of four
panels, the original, what the encoder saw (the hidden patches greyed out), the decoder's
reconstruction of every patch, and that reconstruction with the visible patches pasted back
(the paper's figure: only the hidden patches are the model's work).

The model predicts pixels in the space it was trained in, normalised by the image processor's
mean and std; the panels are turned back into colours with the same numbers. A model trained
with ``norm_pix_loss`` predicts each patch normalised by its own mean and variance, so its
reconstruction is shown with the true patch's mean and variance put back, as the MAE authors'
demo does; that reveals each hidden patch's average colour, which the model did not predict.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from .modeling import ViTMAEForPreTraining, patchify, unpatchify

PANELS = ("original", "masked", "reconstruction", "visible + reconstruction")
_HIDDEN_GREY = 0.5  # the colour of a hidden patch in the "masked" panel, in [0, 1]
_CAPTION_HEIGHT = 14  # pixels above each panel for its name


def reconstruct(
    model: ViTMAEForPreTraining,
    pixel_values: torch.Tensor,
    noise: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The four panels of each image as ``(batch, channels, height, width)`` tensors in the
    model's normalised pixel space, keyed by :data:`PANELS`, and ``"mask"`` (1 for a hidden
    patch). ``noise`` fixes which patches are hidden (see :func:`random_masking`)."""
    patch_size = model.config.patch_size
    image_size = tuple(pixel_values.shape[-2:])
    with torch.no_grad():
        output = model(pixel_values=pixel_values, noise=noise)
    target = patchify(pixel_values, patch_size)
    predicted = output.logits
    if model.config.norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        std = (target.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5
        predicted = predicted * std + mean
    hidden = output.mask[..., None]
    pasted = target * (1 - hidden) + predicted * hidden
    return {
        "original": pixel_values,
        "masked": unpatchify(target * (1 - hidden), patch_size, image_size),
        "reconstruction": unpatchify(predicted, patch_size, image_size),
        "visible + reconstruction": unpatchify(pasted, patch_size, image_size),
        "mask": output.mask,
    }


def reconstruction_grids(
    model: ViTMAEForPreTraining,
    pixel_values: torch.Tensor,
    image_mean: Sequence[float],
    image_std: Sequence[float],
    noise: torch.Tensor | None = None,
    scale: int | None = None,
) -> list[Image.Image]:
    """One PNG-ready strip of the four :data:`PANELS` per image of ``pixel_values`` (already
    normalised with ``image_mean`` and ``image_std``, as the image processor gives them), each
    panel captioned (and at least as wide as its caption) and enlarged ``scale`` times
    (default: to about 96 pixels) without smoothing, so that the patches stay visible."""
    panels = reconstruct(model, pixel_values, noise)
    mean = torch.tensor(list(image_mean), dtype=pixel_values.dtype).view(1, -1, 1, 1)
    std = torch.tensor(list(image_std), dtype=pixel_values.dtype).view(1, -1, 1, 1)
    mask = unpatchify(
        panels["mask"][..., None].expand(-1, -1, model.config.patch_size**2),
        model.config.patch_size,
        tuple(pixel_values.shape[-2:]),
    )
    height, width = pixel_values.shape[-2:]
    scale = scale or max(1, round(96 / max(height, width)))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    caption_width = max(measure.textlength(name) for name in PANELS) + 6
    panel_width = max(width * scale, int(caption_width))
    grids = []
    for index in range(pixel_values.shape[0]):
        strip = Image.new("RGB", (panel_width * len(PANELS), _CAPTION_HEIGHT + height * scale))
        draw = ImageDraw.Draw(strip)
        for column, name in enumerate(PANELS):
            colours = (panels[name][index : index + 1].cpu() * std + mean).clamp(0, 1)
            if name == "masked":
                colours = torch.where(mask[index : index + 1].bool(), _HIDDEN_GREY, colours)
            image = _to_image(colours[0]).resize(
                (width * scale, height * scale), Image.Resampling.NEAREST
            )
            left = column * panel_width + (panel_width - width * scale) // 2
            strip.paste(image, (left, _CAPTION_HEIGHT))
            draw.text((column * panel_width + 3, 1), name, fill=(255, 255, 255))
        grids.append(strip)
    return grids


def save_reconstructions(
    model: ViTMAEForPreTraining,
    pixel_values: torch.Tensor,
    image_mean: Sequence[float],
    image_std: Sequence[float],
    out_dir: Path,
    names: Sequence[str] | None = None,
    noise: torch.Tensor | None = None,
    overview: Path | None = None,
) -> list[Path]:
    """Write :func:`reconstruction_grids` into ``out_dir`` (created if needed) as one PNG per
    image, ``<name>.png`` (default ``sample_1.png``, ``sample_2.png``, ...), and an overview of
    them all, one strip per row, as ``overview`` (default ``out_dir/overview.png``); returns
    the per-image paths."""
    grids = reconstruction_grids(model, pixel_values, image_mean, image_std, noise)
    names = list(names or [f"sample_{index + 1}" for index in range(len(grids))])
    if len(names) != len(grids):
        raise ValueError(f"{len(names)} names for {len(grids)} images")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, grid in zip(names, grids, strict=True):
        path = out_dir / f"{name}.png"
        grid.save(path)
        paths.append(path)
    stacked = Image.new("RGB", (grids[0].width, sum(grid.height for grid in grids)))
    top = 0
    for grid in grids:
        stacked.paste(grid, (0, top))
        top += grid.height
    stacked.save(overview or out_dir / "overview.png")
    return paths


def _to_image(colours: torch.Tensor) -> Image.Image:
    """A ``(channels, height, width)`` tensor in [0, 1] as an RGB image (one channel: grey)."""
    pixels = (colours * 255).round().to(torch.uint8)
    if pixels.shape[0] == 1:
        pixels = pixels.expand(3, -1, -1)
    return Image.fromarray(pixels[:3].permute(1, 2, 0).contiguous().numpy(), "RGB")
