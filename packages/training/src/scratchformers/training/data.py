"""Data helpers every recipe shares: corpora, tokenizers, and fixed-length blocks.

The default corpus is real English that every Python installation carries, so training works
with no network: the documentation topics of ``pydoc_data`` (the text of ``help('if')`` and
friends) and the docstrings of the standard library, read with ``ast`` (nothing is imported).
"""

from __future__ import annotations

import ast
import hashlib
import os
import shutil
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path

import datasets
import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import PreTrainedTokenizerFast

from .console import status

TEXT_SUFFIXES = (".txt", ".md", ".rst")
# ``--dataset imagefolder:<dir>``: a local folder of images (one subfolder per class).
IMAGE_FOLDER_PREFIX = "imagefolder:"
SPECIAL_TOKENS = {
    "pad_token": "<pad>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
}
# BERT's special tokens, for WordPiece tokenizers of masked language models.
WORDPIECE_TOKENS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}


class DataError(ValueError):
    """The data cannot be used; the message says which file or dataset and why."""


def python_docs_corpus() -> list[str]:
    """Documents of the default corpus: pydoc topics, then standard-library docstrings.

    Ordered deterministically (topics by name, modules by path), so the same Python gives the
    same corpus on every machine.
    """
    from pydoc_data.topics import topics

    documents = [topics[name] for name in sorted(topics)]
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        documents.extend(_docstrings(path))
    return [text.strip() for text in documents if len(text.strip()) > 40]


def _docstrings(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, OSError):
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            docstring = ast.get_docstring(node)
            if docstring:
                yield docstring


def load_texts(source: str | None, text_column: str = "text") -> list[str]:
    """The documents to train on.

    ``source`` is ``None`` (the default corpus), a local text file, a folder (every ``.txt``,
    ``.md`` and ``.rst`` file below it, one document per file), or a Hugging Face dataset id
    (needs network; its ``train`` split and ``text_column``). Fails before any training with a
    message naming the problem.
    """
    if source is None:
        texts = python_docs_corpus()
        origin = "the default corpus (pydoc topics and standard-library docstrings)"
    elif Path(source).is_file():
        texts = [Path(source).read_text(encoding="utf-8")]
        origin = f"the file {source}"
    elif Path(source).is_dir():
        files = sorted(p for p in Path(source).rglob("*") if p.suffix in TEXT_SUFFIXES)
        if not files:
            raise DataError(f"the folder {source} holds no {'/'.join(TEXT_SUFFIXES)} files")
        texts = [p.read_text(encoding="utf-8") for p in files]
        origin = f"the folder {source}"
    elif _looks_like_a_path(source):
        raise DataError(f"dataset path {source} does not exist")
    else:
        texts = _hub_texts(source, text_column)
        origin = f"the dataset {source}"
    texts = [text for text in texts if text.strip()]
    if not texts:
        raise DataError(f"{origin} is empty: there is no text to train on")
    return texts


def hub_dataset_id(source: str | None) -> str | None:
    """``source`` when :func:`load_texts` reads it from the Hugging Face Hub, else ``None``
    (the default corpus or a local file or folder): what a model card may list as its data."""
    if source is None or source.startswith(IMAGE_FOLDER_PREFIX):
        return None
    if Path(source).exists() or _looks_like_a_path(source):
        return None
    return source


def _looks_like_a_path(source: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else that does not exist is a missing path.
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or bool(Path(source).suffix)


def _hub_texts(dataset_id: str, text_column: str) -> list[str]:
    try:
        dataset = datasets.load_dataset(dataset_id, split="train")
    except Exception as error:
        raise DataError(
            f"could not load the dataset {dataset_id!r} ({error}); it is neither a local path "
            "nor a Hugging Face dataset reachable from here"
        ) from error
    if text_column not in dataset.column_names:
        raise DataError(
            f"the dataset {dataset_id!r} has no column {text_column!r}; "
            f"its columns are {dataset.column_names} (choose one with --text-column)"
        )
    return list(dataset[text_column])


def split_train_eval(texts: list[str], eval_fraction: float = 0.05) -> tuple[list[str], list[str]]:
    """Hold out every ``1/eval_fraction``-th document (spread over the corpus, deterministic).

    A corpus that is a single document is split by characters instead, so that one text file
    still yields an evaluation set.
    """
    if len(texts) == 1:
        text = texts[0]
        cut = int(len(text) * (1 - eval_fraction))
        return [text[:cut]], [text[cut:]]
    every = max(2, round(1 / eval_fraction))
    train = [text for i, text in enumerate(texts) if i % every != every - 1]
    held_out = [text for i, text in enumerate(texts) if i % every == every - 1]
    return train, held_out


def train_byte_level_bpe(
    texts: list[str], vocab_size: int, cache_dir: Path | None = None
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts`` (any text encodes, nothing is unknown).

    Training takes seconds, but the result is cached under ``cache_dir`` (default
    ``~/.cache/scratchformers/tokenizers``), keyed by the texts and vocabulary size, so reruns
    and every process of a distributed run get the identical tokenizer. The result saves with
    ``save_pretrained`` and loads back with ``AutoTokenizer``. Special tokens: ``<pad>`` 0,
    ``<s>`` 1, ``</s>`` 2, ``<unk>`` 3.
    """

    def build() -> PreTrainedTokenizerFast:
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS.values()),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer=trainer)
        return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)

    return _cached_tokenizer("byte-level BPE", "bpe", texts, vocab_size, cache_dir, build)


def train_wordpiece(
    texts: list[str], vocab_size: int, cache_dir: Path | None = None
) -> PreTrainedTokenizerFast:
    """A BERT-style WordPiece tokenizer trained on ``texts``: lower-cased, accents stripped,
    split on whitespace and punctuation, every sequence wrapped as ``[CLS] ... [SEP]``.

    Cached like :func:`train_byte_level_bpe`. Special tokens: ``[PAD]`` 0, ``[UNK]`` 1,
    ``[CLS]`` 2, ``[SEP]`` 3, ``[MASK]`` 4. Saves with ``save_pretrained``; ``AutoTokenizer``
    and ``pipeline("fill-mask")`` load it.
    """

    def build() -> PreTrainedTokenizerFast:
        tokenizer = Tokenizer(models.WordPiece(unk_token=WORDPIECE_TOKENS["unk_token"]))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            special_tokens=list(WORDPIECE_TOKENS.values()),
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer=trainer)
        cls, sep = WORDPIECE_TOKENS["cls_token"], WORDPIECE_TOKENS["sep_token"]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}",
            pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, tokenizer.token_to_id(cls)), (sep, tokenizer.token_to_id(sep))],
        )
        return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **WORDPIECE_TOKENS)

    return _cached_tokenizer("WordPiece", "wordpiece", texts, vocab_size, cache_dir, build)


def _cached_tokenizer(
    kind: str,
    key: str,
    texts: list[str],
    vocab_size: int,
    cache_dir: Path | None,
    build: Callable[[], PreTrainedTokenizerFast],
) -> PreTrainedTokenizerFast:
    """The tokenizer ``build`` trains on ``texts``, from the cache when it was trained before.

    Keyed by the kind, the texts and the vocabulary size, so that reruns and every process of
    a distributed run get the identical tokenizer.
    """
    digest = hashlib.sha256(f"{vocab_size}\0".encode())
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    cache_dir = cache_dir or Path.home() / ".cache" / "scratchformers" / "tokenizers"
    cached = cache_dir / f"{key}-{vocab_size}-{digest.hexdigest()[:16]}"
    if (cached / "tokenizer.json").is_file():
        status(f"{kind} tokenizer of {vocab_size:,} tokens: the one cached in {cached}")
        return PreTrainedTokenizerFast.from_pretrained(cached)
    status(f"training a {kind} tokenizer of {vocab_size:,} tokens on {len(texts):,} texts")
    # Write to a temporary folder and rename, so a concurrent process never reads half a file.
    partial = cached.with_name(f"{cached.name}.partial-{os.getpid()}")
    build().save_pretrained(partial)
    # If another process finished first the rename fails, and every process loads the
    # winner's: tokenizers' trainers are not deterministic (the ids of "##" pieces follow a
    # hash map's order, huggingface/tokenizers#1794), so two trainings can differ.
    try:
        partial.rename(cached)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
    return PreTrainedTokenizerFast.from_pretrained(cached)


def load_tokenizer(
    source: str | os.PathLike[str], required: tuple[str, ...] = ("eos_token",)
) -> PreTrainedTokenizerFast:
    """A saved tokenizer to train with (``--tokenizer``): a folder written by
    ``save_pretrained``, such as a trained model's folder.

    It must have the ``required`` special tokens (causal-LM blocks end every document with
    the end-of-sequence token; masked-LM ones need ``[MASK]``, ``[CLS]`` and ``[SEP]``); one
    without a padding token pads with its end-of-sequence token. Fails with a message naming
    the path.
    """
    from transformers import AutoTokenizer

    path = Path(source)
    if not path.exists():
        raise DataError(f"--tokenizer {source} does not exist")
    if path.is_file():
        raise DataError(
            f"--tokenizer {source} is a file; pass the folder that save_pretrained wrote (it "
            "holds tokenizer.json and tokenizer_config.json, with the special tokens)"
        )
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise DataError(
            f"--tokenizer {source} holds no tokenizer (no tokenizer.json or tokenizer_config.json)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as error:
        raise DataError(f"--tokenizer {source} could not be loaded ({error})") from error
    missing = [name for name in required if getattr(tokenizer, f"{name}_id", None) is None]
    if missing:
        raise DataError(
            f"the tokenizer in {source} has no {', '.join(missing)}, which this recipe's "
            "examples need"
        )
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def causal_lm_blocks(
    texts: list[str], tokenizer: PreTrainedTokenizerFast, block_size: int
) -> datasets.Dataset:
    """Tokenize ``texts`` (each document ends with ``</s>``) and cut the stream into blocks.

    Every block is exactly ``block_size`` tokens long: no padding, so every token is a training
    signal and every process of a distributed run sees the same number of tokens per batch.
    """
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for encoded in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(encoded)
        ids.append(eos)
    count = len(ids) // block_size
    if count == 0:
        raise DataError(
            f"the text holds {len(ids)} tokens, fewer than one block of block_size={block_size}"
        )
    blocks = [ids[i * block_size : (i + 1) * block_size] for i in range(count)]
    return datasets.Dataset.from_dict({"input_ids": blocks})


def collate_blocks(examples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    """Batch equal-length blocks for a causal LM: the labels are the inputs (the model shifts)."""
    input_ids = torch.tensor([example["input_ids"] for example in examples], dtype=torch.long)
    return {"input_ids": input_ids, "labels": input_ids}


def masked_lm_blocks(
    texts: list[str], tokenizer: PreTrainedTokenizerFast, block_size: int
) -> datasets.Dataset:
    """Tokenize ``texts`` and cut the stream into blocks of ``block_size`` tokens, each one
    ``[CLS] ... [SEP]`` as BERT was pretrained: full blocks, no padding, every position a
    possible masked target."""
    if block_size < 3:
        raise DataError(f"block_size={block_size} leaves no room between [CLS] and [SEP]")
    body = block_size - 2
    ids: list[int] = []
    for encoded in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(encoded)
    count = len(ids) // body
    if count == 0:
        raise DataError(
            f"the text holds {len(ids)} tokens, fewer than one block of block_size={block_size}"
        )
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    blocks = [[cls, *ids[i * body : (i + 1) * body], sep] for i in range(count)]
    return datasets.Dataset.from_dict({"input_ids": blocks})


class MaskingCollator:
    """Batches for masked-language-model training: BERT's dynamic masking, through
    transformers' ``DataCollatorForLanguageModeling`` (15% of the tokens chosen, never a
    special token; of those 80% become ``[MASK]``, 10% a random token, 10% stay).

    Training examples are masked anew in every batch (from torch's global RNG, which the
    loop seeds and checkpoints, so a resume sees the same masks). Examples that already carry
    ``labels`` (the held-out set, masked once by :meth:`mask_once`) are only stacked, so every
    evaluation scores the same masked positions.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerFast, mlm_probability: float = 0.15) -> None:
        from transformers import DataCollatorForLanguageModeling

        if not 0 < mlm_probability < 1:
            raise DataError(f"the masking probability must be in (0, 1), got {mlm_probability}")
        self.tokenizer = tokenizer
        self.mlm_probability = mlm_probability
        self.masking = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability)

    def __call__(self, examples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        if "labels" in examples[0]:
            return {
                key: torch.tensor([example[key] for example in examples], dtype=torch.long)
                for key in ("input_ids", "labels")
            }
        return dict(self.masking([{"input_ids": e["input_ids"]} for e in examples]))

    def mask_once(self, blocks: datasets.Dataset, seed: int = 0) -> datasets.Dataset:
        """``blocks`` masked with a fixed seed, input ids and labels stored: a held-out set."""
        from transformers import DataCollatorForLanguageModeling

        fixed = DataCollatorForLanguageModeling(
            self.tokenizer, mlm_probability=self.mlm_probability, seed=seed
        )
        masked = fixed([{"input_ids": ids} for ids in blocks["input_ids"]])
        return datasets.Dataset.from_dict(
            {"input_ids": masked["input_ids"].tolist(), "labels": masked["labels"].tolist()}
        )
