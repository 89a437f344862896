"""The contracts every scratchformers model must keep, as plain functions that assert.

Like ``torch.testing`` or ``numpy.testing``: each function takes a model (and, where the contract
is "the same as transformers", a reference model with the same weights) plus inputs, raises an
``AssertionError`` that says what broke, and returns nothing, the tokens it generated or the
largest difference it measured. Every package's tests call them with their own tiny models, so
each contract is written once and every model, present and future, is held to the same one:

* forward: logits equal a transformers reference class (:func:`assert_matches_reference`,
  :func:`assert_close_on_real_tokens`); left padding changes no row's logits
  (:func:`assert_padding_changes_nothing`);
* generation, for decoders and encoder-decoders: the KV cache changes nothing
  (:func:`assert_cache_changes_nothing`, :func:`assert_cached_logits_match_full_forward`), a
  padded batch gives each prompt's tokens alone (:func:`assert_batch_equals_each_prompt`), the
  static cache gives the dynamic cache's tokens (:func:`assert_static_cache_matches_dynamic`);
* lean decoding (models with ``LeanGenerationMixin``, in :mod:`.lean`): a static-cache
  ``generate()`` runs the lean loop and gives the tokens of transformers' loop
  (:func:`assert_lean_decoding_matches`, :func:`assert_lean_stopping_matches`), other requests
  go to transformers (:func:`assert_lean_routing`), and the compiled step is compiled once per
  model and reused (:func:`assert_lean_compiled_step`), counted by :func:`spy_decoding`;
* checkpoints: a bit-exact, safetensors-only save/load round trip
  (:func:`assert_save_load_round_trip`), the Auto classes (:func:`assert_auto_classes_load`),
  damaged copies (empty, truncated, foreign weight files, a tensor of another shape, a size
  field missing from config.json) refused with errors naming the file, tensor and field
  (:func:`assert_damaged_checkpoints_raise`), and a hub cache laid out offline for loading by
  hub id (:func:`lay_out_hub_cache`);
* errors: bad inputs, labels and config values raise a ``ValueError`` naming the argument or
  field and the value (:func:`assert_input_errors`, :func:`assert_empty_inputs_raise`,
  :func:`assert_label_errors`, :func:`assert_config_error` with
  :func:`invalid_config_values`);
* the test environment (in :mod:`.environment`): offline (:func:`go_offline`), and a
  hypothesis profile for two CPU cores (:func:`use_hypothesis_profile`);
* reference pairs (in :mod:`.reference`): a reference model with every parameter re-drawn
  (:func:`randomize`), saved and loaded into our class (:func:`build_pair`), described once per
  package as a :class:`PairSpec`; inputs for them (:func:`left_padded_batch`,
  :func:`right_padded_batch`, :func:`random_images`).

Token comparisons use ``torch.equal``. Every check also asserts that what it compares is not
degenerate (varied tokens, padded rows, rows that differ), so it cannot pass vacuously: use tiny
models with odd sizes and a wide initialisation, so that greedy decoding varies.

The kit imports only core-attention's own dependencies (torch, transformers, safetensors),
never pytest: it runs in any model package's test environment. The pytest side (the fixtures
built on it, the seed, the offline set-up, the largest-difference summary) is the plugin
:mod:`.plugin`, which a package's conftest loads with ``pytest_plugins = [PLUGIN]``.
"""

from .contracts import (
    STATIC,
    Inputs,
    assert_auto_classes_load,
    assert_batch_equals_each_prompt,
    assert_cache_changes_nothing,
    assert_cached_logits_match_full_forward,
    assert_close_on_real_tokens,
    assert_config_error,
    assert_damaged_checkpoints_raise,
    assert_empty_inputs_raise,
    assert_input_errors,
    assert_label_errors,
    assert_matches_reference,
    assert_padding_changes_nothing,
    assert_save_load_round_trip,
    assert_static_cache_matches_dynamic,
    invalid_config_values,
    lay_out_hub_cache,
    left_padded_batch,
    right_padded_batch,
)
from .environment import go_offline, use_hypothesis_profile
from .lean import (
    BEAM_SEARCH,
    LEAN,
    TRANSFORMERS_SAMPLE,
    assert_lean_compiled_step,
    assert_lean_decoding_matches,
    assert_lean_routing,
    assert_lean_stopping_matches,
    spy_decoding,
)
from .reference import (
    Pair,
    PairSpec,
    build_pair,
    is_norm_weight,
    load_pair,
    random_images,
    randomize,
)

# The plugin's module name, for a conftest's ``pytest_plugins``.
PLUGIN = f"{__name__}.plugin"

__all__ = [
    "BEAM_SEARCH",
    "LEAN",
    "PLUGIN",
    "STATIC",
    "TRANSFORMERS_SAMPLE",
    "Inputs",
    "Pair",
    "PairSpec",
    "assert_auto_classes_load",
    "assert_batch_equals_each_prompt",
    "assert_cache_changes_nothing",
    "assert_cached_logits_match_full_forward",
    "assert_close_on_real_tokens",
    "assert_config_error",
    "assert_damaged_checkpoints_raise",
    "assert_empty_inputs_raise",
    "assert_input_errors",
    "assert_label_errors",
    "assert_lean_compiled_step",
    "assert_lean_decoding_matches",
    "assert_lean_routing",
    "assert_lean_stopping_matches",
    "assert_matches_reference",
    "assert_padding_changes_nothing",
    "assert_save_load_round_trip",
    "assert_static_cache_matches_dynamic",
    "build_pair",
    "go_offline",
    "invalid_config_values",
    "is_norm_weight",
    "lay_out_hub_cache",
    "left_padded_batch",
    "load_pair",
    "random_images",
    "randomize",
    "right_padded_batch",
    "spy_decoding",
    "use_hypothesis_profile",
]
