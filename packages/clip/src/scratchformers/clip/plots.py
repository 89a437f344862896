"""The clip recipe's picture: how similar each held-out image is to each caption."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch


def plot_similarity(
    similarity: torch.Tensor,
    images: torch.Tensor,
    captions: Sequence[str],
    path: Path,
    title: str,
) -> None:
    """A PNG of ``similarity`` ``(images, captions)``: the images down the left, one per row
    (uint8 ``(n, 3, h, w)``), the captions along the bottom, each cell shaded and labelled by
    the cosine similarity. The i-th caption is the i-th image's: a model that learnt the
    pairing shows a bright diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(captions)
    if similarity.shape != (images.shape[0], count):
        raise ValueError(
            f"similarity is {tuple(similarity.shape)}, but there are {images.shape[0]} images "
            f"and {count} captions"
        )
    side = 0.75 * count + 2.0
    figure, (strip, axis) = plt.subplots(
        1, 2, figsize=(side + 2.2, side + 2.0), dpi=110, width_ratios=[1, count]
    )
    # The images stacked top to bottom, stretched to the rows of the matrix beside them.
    strip.imshow(torch.cat(list(images), dim=1).permute(1, 2, 0).numpy(), aspect="auto")
    strip.set_axis_off()
    axis.imshow(similarity.numpy(), cmap="viridis", vmin=-1.0, vmax=1.0, aspect="auto")
    for row in range(images.shape[0]):
        for column in range(count):
            value = float(similarity[row, column])
            axis.text(
                column,
                row,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="black" if value > 0.3 else "white",
            )
    axis.set_xticks(range(count), labels=list(captions), rotation=60, ha="right", fontsize=8)
    axis.set_yticks([])
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
