"""The pytest plugin every package's tests load: ``pytest_plugins = [PLUGIN]`` in a conftest,
with ``PLUGIN`` (this module's name) imported from :mod:`scratchformers.core_attention.testing`.

Importing it takes the Hugging Face libraries offline and keeps torch on two threads. It
gives every test:

* ``_seed`` (autouse): ``torch.manual_seed(0)`` before each test, so each test draws the same
  weights and inputs on every run and alone;
* ``make_theirs`` and ``make_pair``: the package's :class:`~.reference.PairSpec`, which its
  conftest gives as the fixture ``pair_spec``; ``randomized``: its randomize rule;
* ``assert_matches(actual, expected, mask=None, what="logit")``:
  :func:`~.contracts.assert_close_on_real_tokens` with the package's ``match_tolerance``
  (1e-4 unless its conftest overrides the fixture) and ``match_min_std`` (1e-3: the expected
  values must not be degenerate), which records the difference; ``record_difference`` records
  one measured otherwise;
* ``images(batch=3, height=image_size, width=height, seed=1)``: :func:`~.reference.random_images`
  of the size the conftest gives as the fixture ``image_size``;
* the largest difference of each kind recorded in the session, in the terminal summary.

Only tests load this module: it imports pytest, which the kit itself never does. A conftest
that imports this module itself, instead of only naming it, keeps pytest from rewriting its
asserts: what a conftest calls is in :mod:`.environment`.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from .contracts import assert_close_on_real_tokens
from .environment import go_offline
from .reference import Pair, PairSpec, Randomize, random_images

go_offline()
# The test machines have two CPU cores; more threads only contend for them.
torch.set_num_threads(2)


# The largest difference of each kind that a test recorded: (value, test name).
_LARGEST: dict[str, tuple[float, str]] = {}


def _record(what: str, value: float, where: str) -> None:
    if value >= _LARGEST.get(what, (-1.0, ""))[0]:
        _LARGEST[what] = (value, where)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line per kind of difference: how close the closest-run comparison came."""
    for what, (value, where) in sorted(_LARGEST.items()):
        terminalreporter.write_line(
            f"largest {what} difference against the reference: {value:.3g} ({where})"
        )


@pytest.fixture(autouse=True)
def _seed() -> None:
    """The same random weights and inputs on every run, and for every test on its own."""
    torch.manual_seed(0)


@pytest.fixture
def make_theirs(pair_spec: PairSpec) -> Callable[..., torch.nn.Module]:
    """``make_theirs(kind=None, seed=0, attn_implementation=None, **config_overrides)``: the
    package's reference model with re-drawn weights (:meth:`PairSpec.theirs`)."""
    return pair_spec.theirs


@pytest.fixture
def make_pair(pair_spec: PairSpec, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Pair]:
    """``make_pair(kind=None, seed=0, attn_implementation=None, **config_overrides)``: the
    reference saved with ``save_pretrained`` and loaded into our class (:meth:`PairSpec.pair`),
    in a new folder."""

    def make(
        kind: str | None = None,
        seed: int = 0,
        attn_implementation: str | None = None,
        **overrides: object,
    ) -> Pair:
        directory = tmp_path_factory.mktemp(f"reference-{kind or 'default'}")
        return pair_spec.pair(directory, kind, seed, attn_implementation, **overrides)

    return make


@pytest.fixture
def randomized(pair_spec: PairSpec) -> Randomize:
    """``randomized(model, seed=0)``: the package's randomize rule."""
    return pair_spec.randomize


@pytest.fixture
def match_tolerance() -> float:
    """The largest absolute difference ``assert_matches`` accepts."""
    return 1e-4


@pytest.fixture
def match_min_std() -> float | None:
    """The spread below which ``assert_matches`` calls the expected values degenerate."""
    return 1e-3


@pytest.fixture
def record_difference(request: pytest.FixtureRequest) -> Callable[[str, float], None]:
    """``record_difference(what, value)``: keep ``value`` for the terminal summary if it is the
    largest ``what`` difference so far."""
    return lambda what, value: _record(what, value, request.node.name)


@pytest.fixture
def assert_matches(
    request: pytest.FixtureRequest, match_tolerance: float, match_min_std: float | None
) -> Callable[..., float]:
    """``assert_matches(actual, expected, mask=None, what="logit")``: at most
    ``match_tolerance`` apart on the real (``mask == 1``) positions, between expected values
    that are not degenerate. Returns the difference and records it."""

    def check(
        actual: torch.Tensor,
        expected: torch.Tensor,
        mask: torch.Tensor | None = None,
        what: str = "logit",
    ) -> float:
        difference = assert_close_on_real_tokens(
            actual, expected, mask, atol=match_tolerance, min_std=match_min_std, what=what
        )
        _record(what, difference, request.node.name)
        return difference

    return check


@pytest.fixture
def images(image_size: int) -> Callable[..., torch.Tensor]:
    """``images(batch=3, height=image_size, width=height, seed=1)``: random pixel values, by
    default of the package's image size (its conftest's fixture ``image_size``)."""

    def make(
        batch: int = 3, height: int = image_size, width: int | None = None, seed: int = 1
    ) -> torch.Tensor:
        return random_images(batch, height, width, seed)

    return make
