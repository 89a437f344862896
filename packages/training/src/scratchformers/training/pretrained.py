"""Starting a run from a pretrained checkpoint (``--init-from``), for every recipe.

A checkpoint is named the way people name them: a local folder (this project's, transformers',
timm's), a local file (an OpenAI or open_clip ``.pt`` / ``.safetensors``), or a Hugging Face
Hub id, which is downloaded once into the Hub cache and then read as the local folder it
becomes. Everything after that first step works on a local path, so the Hub and a folder take
the same road, and the offline tests exercise all of it but the download.

Loading goes through the model class's own ``from_pretrained`` (which converts transformers'
layouts, see :mod:`scratchformers.core_attention.interop`), asked for its loading info. What
the info says is what the user needs before the first step:

* weights of a task head whose shape the new data changes (a classifier for another label
  set) start fresh, and the run says which, as transformers does;
* any other weight the checkpoint does not fill stops the run, naming it: a fine-tuning from
  a half-loaded body would train without a word and be worse for it;
* the format, the parameter count and the fresh heads are printed, so that the log says what
  the run really started from.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .console import status

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# What a checkpoint folder must hold to be downloaded: configs, weights (safetensors only:
# pickles are never read), tokenizer and processor files.
HUB_FILES = ("*.json", "*.safetensors", "*.txt", "*.model", "*.spm", "*.tiktoken", "*.pt")
# Prefix of this project's config.json model types (``scratchformers-gpt2``, ...).
OUR_MODEL_TYPE_PREFIX = "scratchformers-"


class PretrainedError(ValueError):
    """A checkpoint cannot start this run; the one-line message names the flag, the
    checkpoint and what is wrong with it."""


@dataclass
class Pretrained:
    """A model loaded from a checkpoint, and what the run should say about it.

    Attributes:
        model: the loaded model, in train mode.
        source: the checkpoint as the user named it (a path or a Hub id).
        path: where it lies on this machine (the Hub cache for an id).
        format: what kind of checkpoint it was, in words (``"a transformers bert folder"``).
        fresh: names of the weights that start from their initial values (a new task head).
    """

    model: PreTrainedModel
    source: str
    path: Path
    format: str
    fresh: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One line for the log and the model card."""
        parameters = sum(p.numel() for p in self.model.parameters())
        line = f"{self.source} ({self.format}, {parameters / 1e6:.2f}M parameters)"
        if self.fresh:
            line += f"; new, starting fresh: {', '.join(_module_names(self.fresh))}"
        return line


def checkpoint_path(source: str, flag: str = "--init-from") -> Path:
    """The local path of a checkpoint named by ``source``: the path itself when it exists,
    else the folder a Hub id downloads to (configs, safetensors weights, tokenizer and
    processor files). A missing path, or an id the Hub cannot give, raises a
    :class:`PretrainedError` naming ``flag``."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    if _looks_like_a_path(source):
        raise PretrainedError(f"{flag} {source} does not exist")
    from huggingface_hub import snapshot_download

    status(f"{flag}: fetching {source} from the Hugging Face Hub (or its cache)")
    try:
        return Path(snapshot_download(source, allow_patterns=list(HUB_FILES)))
    except Exception as error:
        raise PretrainedError(
            f"{flag} {source} is not a local folder or file, and the Hugging Face Hub could not "
            f"give it ({type(error).__name__}: {error}); offline, download it first or pass "
            "its folder"
        ) from error


def _looks_like_a_path(source: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else that does not exist is a missing path.
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or bool(Path(source).suffix)


def checkpoint_config(path: Path, flag: str = "--init-from") -> dict[str, Any]:
    """The config.json of the checkpoint folder ``path``; a :class:`PretrainedError` naming
    the folder when it has none or it is not JSON."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise PretrainedError(
            f"{flag} {path} holds no config.json: give a folder written by save_pretrained "
            "(this project's, transformers'), timm's Hub folder, or a Hub id"
        )
    try:
        return json.loads(config_file.read_text(encoding="utf-8"))
    except ValueError as error:
        raise PretrainedError(f"{flag} {config_file} is not valid JSON ({error})") from error


def checkpoint_format(config: dict[str, Any]) -> str:
    """What wrote a checkpoint folder, from its config.json: ``"timm"`` (an ``architecture``
    and a ``pretrained_cfg``), ``"scratchformers"`` (our model types) or ``"transformers"``."""
    if "architecture" in config and "model_type" not in config:
        return "timm"
    if str(config.get("model_type", "")).startswith(OUR_MODEL_TYPE_PREFIX):
        return "scratchformers"
    return "transformers"


def load_pretrained(
    model_class: type[PreTrainedModel],
    source: str,
    *,
    flag: str = "--init-from",
    new_heads: Sequence[str] = (),
    **config_changes: Any,
) -> Pretrained:
    """``model_class`` loaded from the checkpoint ``source`` (a folder of ours or of the
    transformers class it mirrors, or a Hub id of one), to fine-tune.

    ``config_changes`` set config fields for the new data (``id2label``, say). A weight whose
    shape they change starts fresh, as do the weights under the module names ``new_heads``
    (regular expressions, matched against the start of the weight's name: ``"classifier"``)
    when the checkpoint's label set differs from ``config_changes``'s ``id2label``; both are
    named in the log. Any other weight the checkpoint leaves unfilled raises a
    :class:`PretrainedError` that names it.
    """
    path = checkpoint_path(source, flag)
    config = checkpoint_config(path, flag)
    kind = checkpoint_format(config)
    if kind == "timm":
        raise PretrainedError(
            f"{flag} {source} is a timm checkpoint, which the {model_class.__name__} recipe "
            "does not read (the vit recipe does)"
        )
    model_type = config.get("model_type", "unknown")
    described = (
        f"a scratchformers {model_type.removeprefix(OUR_MODEL_TYPE_PREFIX)} folder"
        if kind == "scratchformers"
        else f"a transformers {model_type} folder"
    )
    try:
        model, info = model_class.from_pretrained(
            path, output_loading_info=True, ignore_mismatched_sizes=True, **config_changes
        )
    except PretrainedError:
        raise
    except (ValueError, TypeError, OSError, KeyError, RuntimeError) as error:
        raise PretrainedError(
            f"{flag} {source} ({described}) does not load as {model_class.__name__}: {error}"
        ) from error
    missing = set(info.get("missing_keys", ()))
    missing_body = sorted(name for name in missing if not _under(name, new_heads))
    if missing_body:
        raise PretrainedError(
            f"{flag} {source} ({described}) does not hold {len(missing_body)} weights of "
            f"{model_class.__name__}: {missing_body[:8]}; is it a checkpoint of this "
            "architecture?"
        )
    fresh = missing | {_mismatched_name(entry) for entry in info.get("mismatched_keys", ())}
    if new_heads and _labels_changed(config, config_changes):
        fresh |= set(reinitialise(model, new_heads))
    fresh = sorted(fresh)
    # The model becomes the run's: its card and processor are the run's own, written at its
    # end, not the checkpoint folder's (which a model loaded from it would carry otherwise).
    from scratchformers.core_attention import forget_card_source

    forget_card_source(model)
    model.train()
    pretrained = Pretrained(model=model, source=source, path=path, format=described, fresh=fresh)
    status(f"starting from {pretrained.describe()}")
    if fresh:
        status(
            f"warning: {len(fresh)} weights of {model_class.__name__} are not in {source} (a new "
            f"task head for this data) and start from their initial values: "
            f"{', '.join(_module_names(fresh))}"
        )
    return pretrained


def _mismatched_name(entry: Any) -> str:
    # transformers reports a mismatched weight as its name, or (name, their shape, our shape).
    return entry if isinstance(entry, str) else entry[0]


def _labels_changed(config: dict[str, Any], changes: dict[str, Any]) -> bool:
    """Whether the data's label names (``changes["id2label"]``) differ from the checkpoint's."""
    if "id2label" not in changes:
        return False
    # A config.json without id2label has transformers' default names for its label count.
    default = {str(i): f"LABEL_{i}" for i in range(config.get("num_labels", 2))}
    theirs = {int(index): name for index, name in (config.get("id2label") or default).items()}
    ours = {int(index): name for index, name in changes["id2label"].items()}
    return theirs != ours


def reinitialise(model: PreTrainedModel, module_patterns: Sequence[str]) -> list[str]:
    """Give the modules named by ``module_patterns`` (regular expressions matched against the
    start of their names) their initial values again, with the model's own initialisation;
    returns the names of the weights it reset."""
    pattern = re.compile("|".join(f"(?:{p})" for p in module_patterns))
    reset = []
    for name, module in model.named_modules():
        if name and pattern.match(name) and not any(True for _ in module.children()):
            # transformers' initialisers skip tensors marked as loaded: unmark them first.
            for parameter in module.parameters(recurse=False):
                parameter._is_hf_initialized = False
            model._init_weights(module)
            reset += [f"{name}.{weight}" for weight, _ in module.named_parameters()]
    return reset


def _under(name: str, module_patterns: Sequence[str]) -> bool:
    return any(re.match(pattern, name) for pattern in module_patterns)


def _module_names(weights: list[str]) -> list[str]:
    """``classifier.weight``, ``classifier.bias`` -> ``classifier``: the log names modules."""
    return list(dict.fromkeys(name.rsplit(".", 1)[0] for name in weights))


def load_checkpoint_processor(path: Path, auto_class: str = "AutoTokenizer") -> Any:
    """The tokenizer (or image processor, with ``auto_class="AutoImageProcessor"``) saved in
    the checkpoint folder ``path``, or ``None`` when it has none: the run then makes its own."""
    import transformers

    markers = {
        "AutoTokenizer": ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json"),
        "AutoImageProcessor": ("preprocessor_config.json",),
        "AutoProcessor": ("preprocessor_config.json", "tokenizer_config.json"),
    }[auto_class]
    if not path.is_dir() or not any((path / name).is_file() for name in markers):
        return None
    config = path / "config.json"
    if config.is_file():
        # The Auto classes read the folder's config.json to find the processor's class: the
        # package that registers our model type is imported first, as ``scratchformers eval``
        # does, or transformers warns that the model type is unknown.
        from .commands.modeldir import ModelFolder, import_model_code

        with contextlib.suppress(ValueError, KeyError):
            import_model_code(ModelFolder(path, checkpoint_config(path), None))
    try:
        return getattr(transformers, auto_class).from_pretrained(path)
    except Exception as error:
        raise PretrainedError(
            f"the {auto_class.removeprefix('Auto')} saved in {path} could not be loaded ({error})"
        ) from error
