"""A lean decode loop for ``generate()`` with a static KV cache.

Decoding one token at batch 1 is a few dozen tiny kernels around weights that must be read from
memory once per token, so the time that is not spent reading weights is per-step overhead:
Python, kernel launches, and bookkeeping. transformers' ``GenerationMixin._sample`` is general
(it serves every model, output option and cache), and it pays for that in every step: it
re-prepares the model inputs and rebuilds the attention mask outside the model.

:func:`lean_sample` is the same algorithm (greedy or sampling, transformers' own logits
processors and stopping criteria, so the tokens are the same) with only the work one step needs:

* the model inputs are built once; each step changes one position tensor in place;
* the attention mask is built inside the model from that position (the static cache's empty
  tail is hidden by the causal rule), so a compiled step sees the same shapes every time;
* the step (model forward plus taking the last logits) is one ``torch.compile``'d function when
  compiling pays: on an accelerator, or on the CPU when a ``compile_config`` is given. On the
  CPU it compiles with inductor's C++ wrapper (``cpp_wrapper``), which calls the kernels from
  C++ instead of Python; that is most of what a compiled decode step gains on a CPU.

Models opt in by inheriting :class:`LeanGenerationMixin` instead of ``GenerationMixin``; it
routes ``generate(..., cache_implementation="static")`` (or a ``StaticCache`` passed in) with
greedy or sampling decoding through :func:`lean_sample` (transformers' ``custom_generate``
hook), and everything else (beams, assisted decoding, dict outputs, dynamic caches) through
transformers unchanged.
"""

from __future__ import annotations

import copy
import types
from typing import Any

import torch
from transformers import CompileConfig, GenerationConfig, GenerationMixin, StaticCache
from transformers.generation.configuration_utils import GenerationMode
from transformers.generation.logits_process import LogitsProcessorList
from transformers.generation.stopping_criteria import MaxLengthCriteria, StoppingCriteriaList

from .masks import cache_lengths

_LEAN_MODES = (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE)
# What generate() hands a decoding method for a decoder-only model; anything else (images,
# token_type_ids, ...) means the model needs transformers' general input preparation.
_LEAN_MODEL_KWARGS = {"attention_mask", "position_ids", "cache", "use_cache", "logits_to_keep"}
_OUTPUT_OPTIONS = (
    "return_dict_in_generate",
    "output_scores",
    "output_logits",
    "output_attentions",
    "output_hidden_states",
)


def compile_options(compile_config: Any, device: torch.device) -> dict[str, Any]:
    """``torch.compile`` keyword arguments for the decode step, from transformers' ``CompileConfig``.

    On a CPU, CUDA graphs (``mode="reduce-overhead"``, transformers' default) do not exist; the
    C++ wrapper is what removes the launch overhead there, so it replaces a default mode. An
    explicit ``options`` dict or a mode other than the defaults is taken as given. Shapes are
    static unless ``dynamic`` says otherwise: a decode step has one shape per batch size and
    cache length, and kernels specialised to it are the fast ones.
    """
    options = compile_config.to_dict()
    if options.get("dynamic") is None:
        options["dynamic"] = False
    default_mode = options.get("mode") in (None, "default", "reduce-overhead")
    if device.type == "cpu" and options.get("options") is None and default_mode:
        options["mode"] = None
        options["options"] = {"cpp_wrapper": True}
    return options


def _should_compile(model: GenerationMixin, generation_config: GenerationConfig) -> bool:
    if generation_config.disable_compile:
        return False
    return model.device.type != "cpu" or generation_config.compile_config is not None


def _sharded(model: GenerationMixin) -> bool:
    """Whether this runs in a process group, where generate() may have to keep processes in
    step (ZeRO-3, FSDP); the lean loop cannot, so it leaves every multi-process call alone."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False
    return torch.distributed.get_world_size() > 1


class LeanGenerationMixin(GenerationMixin):
    """``GenerationMixin`` whose static-cache greedy and sampling ``generate()`` runs
    :func:`lean_sample`; every other request goes through transformers as usual."""

    def generate(
        self,
        inputs: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        **kwargs: Any,
    ) -> Any:
        if kwargs.get("custom_generate") is None and self._lean_decoding_applies(
            generation_config, kwargs
        ):
            kwargs["custom_generate"] = lean_sample
        return super().generate(inputs, generation_config, **kwargs)

    def _lean_decoding_applies(
        self, generation_config: GenerationConfig | None, kwargs: dict[str, Any]
    ) -> bool:
        if self.config.is_encoder_decoder or kwargs.get("assistant_model") is not None:
            return False
        # transformers hands a custom decoding method neither the streamer nor synced_gpus
        # (they are not in its extra parameters), so requests that need them stay with _sample.
        if kwargs.get("streamer") is not None or kwargs.get("synced_gpus") or _sharded(self):
            return False
        # Resolve the settings as generate() will (call arguments over the model's defaults),
        # on copies, because this must not consume anything generate() still needs.
        config, _ = self._prepare_generation_config(
            copy.deepcopy(generation_config), **{k: v for k, v in kwargs.items() if k != "cache"}
        )
        static = config.cache_implementation == "static" or isinstance(
            kwargs.get("cache"), StaticCache
        )
        outputs_requested = any(getattr(config, name, False) for name in _OUTPUT_OPTIONS)
        return static and config.get_generation_mode() in _LEAN_MODES and not outputs_requested

    def _lean_decode_step(
        self,
        tokens: torch.Tensor,
        position_ids: torch.Tensor,
        padding_mask: torch.Tensor | None,
        cache: StaticCache,
    ) -> torch.Tensor:
        """One decode step: the float32 logits of the next token, ``(batch, vocab)``."""
        outputs = self(
            tokens,
            attention_mask=padding_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
            return_dict=True,
        )
        return outputs.logits[:, -1].to(torch.float32)

    def _lean_step_function(self, generation_config: GenerationConfig) -> Any:
        """The decode step, compiled once per compile config and kept for later calls (so
        repeated ``generate()`` calls reuse the compiled code)."""
        if not _should_compile(self, generation_config):
            return self._lean_decode_step
        options = compile_options(generation_config.compile_config or CompileConfig(), self.device)
        key = repr(sorted(options.items()))
        compiled = self.__dict__.setdefault("_lean_compiled_steps", {})
        if key not in compiled:
            step = _with_own_code(type(self)._lean_decode_step).__get__(self)
            compiled[key] = torch.compile(step, **options)
        return compiled[key]


def _with_own_code(function: Any) -> Any:
    """A copy of ``function`` with a code object of its own.

    Dynamo keeps compiled code, and its recompile limit, per code object, and a method has one
    code object for every instance: without a copy, all models in a process would share one
    cache, and past ``torch._dynamo.config.recompile_limit`` (model, shape) pairs the next
    model's step would silently run uncompiled.
    """
    clone = types.FunctionType(
        function.__code__.replace(),
        function.__globals__,
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )
    clone.__kwdefaults__ = function.__kwdefaults__
    return clone


@torch.no_grad()
def lean_sample(
    model: LeanGenerationMixin,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    synced_gpus: bool = False,
    streamer: Any = None,
    **model_kwargs: Any,
) -> torch.LongTensor:
    """Greedy or sampled decoding with a static cache: ``GenerationMixin._sample``'s tokens with
    less work per step. A ``custom_generate`` decoding method; ``generate()`` prepares every
    argument. Requests it does not cover go to ``_sample``. ``streamer`` and ``synced_gpus``
    are ``_sample``'s parameters, but transformers does not pass them to a custom decoding
    method; :class:`LeanGenerationMixin` leaves such requests to ``_sample``.
    """
    cache = model_kwargs.get("cache")
    covered = (
        isinstance(cache, StaticCache)
        and not synced_gpus
        and streamer is None
        and model_kwargs.get("use_cache", True)
        and set(model_kwargs) <= _LEAN_MODEL_KWARGS
        and not any(getattr(generation_config, name, False) for name in _OUTPUT_OPTIONS)
    )
    if not covered:
        return GenerationMixin._sample(
            model,
            input_ids,
            logits_processor=logits_processor,
            stopping_criteria=stopping_criteria,
            generation_config=generation_config,
            synced_gpus=synced_gpus,
            streamer=streamer,
            **model_kwargs,
        )

    batch_size, prompt_length = input_ids.shape
    device = input_ids.device
    padding_mask = model_kwargs.get("attention_mask")  # None: no padding anywhere
    position_ids = model_kwargs.get("position_ids")
    if position_ids is None:
        position_ids = torch.arange(prompt_length, device=device).expand(batch_size, -1)

    # The prompt, in one eager forward (its length differs from call to call).
    outputs = model(
        input_ids,
        attention_mask=padding_mask,
        position_ids=position_ids,
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
        return_dict=True,
    )
    logits = outputs.logits[:, -1].to(torch.float32)
    del outputs

    # Every key slot after the prompt will hold a generated token; the causal rule inside the
    # model hides the slots not filled yet, so this mask stays the same for the whole loop.
    key_padding = None
    if padding_mask is not None:
        _, key_length = cache_lengths(cache, query_length=1)
        key_padding = torch.ones(batch_size, key_length, dtype=torch.bool, device=device)
        key_padding[:, :prompt_length] = padding_mask.bool()
    next_positions = position_ids[:, -1:].clone()
    step = model._lean_step_function(generation_config)

    sequences = torch.empty(
        batch_size, generation_config.max_length, dtype=input_ids.dtype, device=device
    )
    sequences[:, :prompt_length] = input_ids
    length = prompt_length
    pad_token = generation_config._pad_token_tensor
    has_eos = any(hasattr(criterion, "eos_token_id") for criterion in stopping_criteria)
    unfinished = torch.ones(batch_size, dtype=torch.bool, device=device)
    # With only a length limit, when to stop is known without looking at the tokens, so the
    # loop never waits for the device to finish a step before queueing the next.
    length_only = all(isinstance(criterion, MaxLengthCriteria) for criterion in stopping_criteria)
    length_limit = min(
        [criterion.max_length for criterion in stopping_criteria if length_only]
        + [generation_config.max_length]
    )
    while True:
        scores = logits_processor(sequences[:, :length], logits)
        if generation_config.do_sample:
            next_tokens = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1)[:, 0]
        else:
            next_tokens = torch.argmax(scores, dim=-1)
        if has_eos:
            next_tokens = torch.where(unfinished, next_tokens, pad_token)
        sequences[:, length] = next_tokens
        length += 1
        if length >= length_limit:
            break
        if not length_only:
            unfinished &= ~stopping_criteria(sequences[:, :length], scores)
            if not bool(unfinished.any()):  # waits for the device: only when a row can stop early
                break
        next_positions += 1
        logits = step(next_tokens[:, None], next_positions, key_padding, cache)
    return sequences[:, :length]
