"""Reference pairs: the same random weights in a reference class and in ours.

A parity test starts from a reference model (a transformers class) whose parameters are all
re-drawn (:func:`randomize`): biases, norms, embeddings and tables that a fresh model leaves at
zero or one, so that a wrongly mapped tensor cannot hide behind a zero or a one. The reference
is saved with ``save_pretrained`` and loaded into our class with ``from_pretrained``
(:func:`build_pair`), so every parity test goes through the real checkpoint conversion.

A package describes its pairs once, as a :class:`PairSpec`: for each kind of model the reference
class and ours, the reference config, and its randomize rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

Randomize = Callable[[torch.nn.Module, int], torch.nn.Module]


def is_norm_weight(name: str) -> bool:
    """A normalisation layer's scale, by the name of the module that holds it: ``LayerNorm``,
    ``layernorm_before``, ``norm1``, ``decoder_norm``, or GPT-2's and OpenAI's ``ln_1``,
    ``ln_f``."""
    path, _, leaf = name.rpartition(".")
    module = path.rpartition(".")[2]
    return leaf == "weight" and ("norm" in module.lower() or module.startswith("ln_"))


def randomize(
    model: torch.nn.Module,
    seed: int = 0,
    *,
    std: float = 0.2,
    norm_weight: Callable[[str], bool] = is_norm_weight,
    fixed: Mapping[str, float] | None = None,
) -> torch.nn.Module:
    """Re-draw every parameter of ``model`` in place from a generator seeded with ``seed``:
    norm scales (``norm_weight(name)``) ~ N(1, std), everything else ~ N(0, std), and the
    parameters named in ``fixed`` set to that value (a temperature, whose noise would make the
    outputs overflow). Returns ``model``.

    The noise is drawn for every parameter, ``fixed`` ones included, in ``named_parameters``
    order: the same model and seed give the same weights whatever the rule.
    """
    fixed = fixed or {}
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator) * std
            if name in fixed:
                parameter.fill_(fixed[name])
            else:
                parameter.copy_(noise + 1.0 if norm_weight(name) else noise)
    return model


def random_images(
    batch: int = 3, height: int = 20, width: int | None = None, seed: int = 1, channels: int = 3
) -> torch.Tensor:
    """``(batch, channels, height, width)`` pixel values ~ N(0, 1), as a normalising image
    processor gives them; square unless ``width`` is given."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((batch, channels, height, width or height), generator=generator)


@dataclass
class Pair:
    """The same weights twice: the reference model and ours, loaded from ``directory``.

    Unpacks as ``theirs, ours, directory``.
    """

    theirs: torch.nn.Module
    ours: torch.nn.Module
    directory: Path

    def __iter__(self) -> Iterator[Any]:
        return iter((self.theirs, self.ours, self.directory))


def _attn_options(attn_implementation: str | None) -> dict[str, str]:
    return {} if attn_implementation is None else {"attn_implementation": attn_implementation}


def load_pair(
    theirs: torch.nn.Module,
    our_class: type,
    directory: str | Path,
    attn_implementation: str | None = None,
) -> Pair:
    """Save ``theirs`` with ``save_pretrained`` to ``directory`` and load it into ``our_class``
    with ``from_pretrained``, which must give exactly that class (not a subclass or a base
    model), in eval mode."""
    directory = Path(directory)
    theirs.save_pretrained(directory)
    loaded = our_class.from_pretrained(directory, **_attn_options(attn_implementation))
    assert type(loaded) is our_class, f"{our_class.__name__} loaded as {type(loaded).__name__}"
    return Pair(theirs, loaded.eval(), directory)


def build_pair(
    reference_class: Callable[[Any], torch.nn.Module],
    our_class: type,
    config: Any,
    directory: str | Path,
    *,
    seed: int = 0,
    randomize: Randomize = randomize,
    attn_implementation: str | None = None,
) -> Pair:
    """A ``reference_class(config)`` with every parameter re-drawn by ``randomize(model, seed)``,
    saved to ``directory`` and loaded into ``our_class``: see :func:`load_pair`.

    ``attn_implementation`` is set on both sides (on the reference's config, and as
    ``from_pretrained``'s argument on ours).
    """
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    theirs = randomize(reference_class(config), seed).eval()
    return load_pair(theirs, our_class, directory, attn_implementation)


@dataclass(frozen=True)
class PairSpec:
    """How one package builds its reference pairs.

    ``kinds`` maps each kind of model to ``(reference class, our class)``; the first kind is the
    default. A reference class is anything that builds a model from a config (a
    ``functools.partial`` such as BERT's model without its pooler), and our class may be
    ``None`` for a kind that is only ever built on the reference side. ``config(**overrides)``
    gives the reference's config, ``randomize(model, seed)`` the package's randomize rule.
    """

    kinds: Mapping[str, tuple[Callable[[Any], torch.nn.Module], type | None]]
    config: Callable[..., Any]
    randomize: Randomize = field(default=randomize)

    def _kind(self, kind: str | None) -> str:
        kind = next(iter(self.kinds)) if kind is None else kind
        assert kind in self.kinds, f"no kind {kind!r} among {list(self.kinds)}"
        return kind

    def theirs(
        self,
        kind: str | None = None,
        seed: int = 0,
        attn_implementation: str | None = None,
        **overrides: Any,
    ) -> torch.nn.Module:
        """The reference model of ``kind`` with re-drawn weights, in eval mode."""
        config = self.config(**overrides)
        if attn_implementation is not None:
            config._attn_implementation = attn_implementation
        return self.randomize(self.kinds[self._kind(kind)][0](config), seed).eval()

    def pair(
        self,
        directory: str | Path,
        kind: str | None = None,
        seed: int = 0,
        attn_implementation: str | None = None,
        **overrides: Any,
    ) -> Pair:
        """The reference of ``kind`` (see :meth:`theirs`) and ours loaded from its files: see
        :func:`build_pair`."""
        reference_class, our_class = self.kinds[self._kind(kind)]
        assert our_class is not None, f"kind {kind!r} has no class of ours"
        return build_pair(
            reference_class,
            our_class,
            self.config(**overrides),
            directory,
            seed=seed,
            randomize=self.randomize,
            attn_implementation=attn_implementation,
        )
