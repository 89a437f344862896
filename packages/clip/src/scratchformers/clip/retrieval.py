"""Retrieval recall: how often the right caption (image) is among the k nearest to an image
(caption), over a whole held-out set, the standard measure of a CLIP on its own pairs.

The i-th image and the i-th text are a pair. A pair is found at k when fewer than k other
candidates score strictly higher than its partner: a tie (the same caption twice in the set)
does not count against it, since both are right.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Rows of the similarity matrix computed at once: memory stays at CHUNK x N.
CHUNK = 1024


def recall_at_k(similarity: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """For a square ``(queries, candidates)`` similarity matrix whose diagonal holds each
    query's own partner: the share of queries whose partner ranks within the first ``k``, by
    ``k``."""
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"need a square similarity matrix, got shape {tuple(similarity.shape)}")
    own = similarity.diagonal().unsqueeze(1)
    rank = (similarity > own).sum(dim=1)
    return {k: float((rank < k).sum()) / len(rank) for k in ks}


def retrieval_recall(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """``image_to_text_recall_at_<k>`` and ``text_to_image_recall_at_<k>`` for paired
    ``(n, dim)`` embeddings (normalised: the cosine similarity ranks), computed in chunks of
    :data:`CHUNK` queries."""
    image_embeds, text_embeds = image_embeds.float(), text_embeds.float()
    metrics: dict[str, float] = {}
    for name, queries, candidates in (
        ("image_to_text", image_embeds, text_embeds),
        ("text_to_image", text_embeds, image_embeds),
    ):
        found = dict.fromkeys(ks, 0.0)
        for start in range(0, len(queries), CHUNK):
            scores = queries[start : start + CHUNK] @ candidates.T
            # The partner's score from the same product: a separately computed dot product
            # could round differently and rank the partner above itself.
            rows = torch.arange(len(scores))
            own = scores[rows, start + rows]
            rank = (scores > own[:, None]).sum(dim=1)
            for k in ks:
                found[k] += float((rank < k).sum())
        metrics.update({f"{name}_recall_at_{k}": found[k] / len(queries) for k in ks})
    return metrics
