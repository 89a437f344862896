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
from collections.abc import Callable, Iterable, Iterator
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


def load_texts(source: str | None, text_column: str = "text", flag: str = "--dataset") -> list[str]:
    """The documents to train on (or, with ``flag="--eval-dataset"``, to hold out).

    ``source`` is ``None`` (the default corpus), a local text file (one document), a folder of
    ``.txt``, ``.md`` and ``.rst`` files (one document per file), a ``.csv``/``.tsv``/
    ``.jsonl``/``.json``/``.parquet`` file or a folder of them (one document per row, its
    ``text_column``), or a Hugging Face dataset id (its ``train`` split, ``validation`` for
    ``--eval-dataset``). Fails before any training with one line naming ``flag``, the source
    and the problem: a missing column names the columns there are.
    """
    from .tables import is_table_file

    path = Path(source).expanduser() if source is not None else None
    if source is None:
        texts = python_docs_corpus()
        origin = "the default corpus (pydoc topics and standard-library docstrings)"
    elif path is not None and path.is_file() and not is_table_file(source):
        texts = [path.read_text(encoding="utf-8")]
        origin = f"{flag} {source}"
    elif path is not None and path.is_dir() and _text_files(path):
        texts = [p.read_text(encoding="utf-8") for p in _text_files(path)]
        origin = f"{flag} {source}"
    elif path is not None and path.is_dir() and not _holds_tables(path):
        raise DataError(
            f"{flag} {source} holds no {'/'.join(TEXT_SUFFIXES)} files and no data files"
        )
    elif path is not None and not path.exists() and _looks_like_a_path(source):
        raise DataError(f"{flag}: dataset path {source} does not exist")
    else:
        table = _text_table(source, text_column, flag)
        texts = [text for text in table[text_column] if isinstance(text, str)]
        origin = f"{flag} {source}"
    texts = [text for text in texts if text.strip()]
    if not texts:
        raise DataError(f"{origin} is empty: there is no text in it to train on")
    return texts


def reads_rows(source: str | None) -> bool:
    """Whether :func:`load_texts` reads ``source`` as a table (rows, a text column) rather
    than as text files (or the default corpus)."""
    from .tables import is_table_file

    if source is None:
        return False
    path = Path(source).expanduser()
    if path.is_file():
        return is_table_file(source)
    return not (path.is_dir() and _text_files(path))


def _text_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)


def _holds_tables(folder: Path) -> bool:
    """Whether ``datasets.load_dataset`` could read ``folder``: data files or a loading script
    (a local copy of a Hub dataset, the offline stand-in for its id)."""
    from .tables import TABLE_FORMATS

    suffixes = {*TABLE_FORMATS, ".arrow", ".py"}
    return any(p.suffix.lower() in suffixes for p in folder.rglob("*") if p.is_file())


def _split_for(flag: str) -> str:
    # A Hub dataset's held-out data is its validation split; the training data its train split.
    return "validation" if flag == "--eval-dataset" else "train"


def _text_table(
    source: str, text_column: str, flag: str, *, streaming: bool = False
) -> datasets.Dataset | datasets.IterableDataset:
    """The table ``source`` names (a table file, a folder of them, a Hub id), checked for
    ``text_column`` before anything else reads it."""
    from .tables import read_table, require_columns

    table = read_table(source, flag, split=_split_for(flag), streaming=streaming)
    if streaming and not table.column_names:
        # A streamed json file does not know its columns before its first row is read.
        first = next(iter(table.take(1)), None)
        if first is None:
            raise DataError(f"{flag} {source} holds no rows")
        columns = list(first)
        if text_column not in columns:
            raise DataError(
                f"{flag} {source} has no column {text_column!r} (its columns: "
                f"{', '.join(columns)}); name the right one with --text-column"
            )
    else:
        require_columns(table, {"--text-column": text_column}, source, flag)
    return table


def stream_documents(
    source: str, text_column: str = "text", flag: str = "--dataset"
) -> datasets.IterableDataset:
    """The documents of ``source`` read as they are needed (``--streaming``), as an
    ``IterableDataset`` of rows ``{"text": ...}``, in :func:`load_texts`'s order.

    A folder of text files gives one document per file, as :func:`load_texts` does; a single
    text file is read paragraph by paragraph (blank-line separated), each one a document, so
    that a file larger than memory never sits in it whole. Tables and Hub ids give one document
    per row, rows without text left out. Checked like :func:`load_texts`, before any work.
    """
    from .tables import is_table_file

    path = Path(source).expanduser()
    if path.is_file() and not is_table_file(source):
        documents = datasets.load_dataset(
            "text", data_files=str(path), sample_by="paragraph", split="train", streaming=True
        )
    elif path.is_dir() and _text_files(path):
        documents = datasets.load_dataset(
            "text",
            data_files=[str(p) for p in _text_files(path)],
            sample_by="document",
            split="train",
            streaming=True,
        )
    elif path.is_dir() and not _holds_tables(path):
        raise DataError(
            f"{flag} {source} holds no {'/'.join(TEXT_SUFFIXES)} files and no data files"
        )
    elif not path.exists() and _looks_like_a_path(source):
        raise DataError(f"{flag}: dataset path {source} does not exist")
    else:
        table = _text_table(source, text_column, flag, streaming=True)
        documents = table.select_columns([text_column])
        if text_column != "text":
            documents = documents.rename_column(text_column, "text")
    documents = documents.filter(lambda row: isinstance(row["text"], str) and row["text"].strip())
    if next(iter(documents.take(1)), None) is None:
        raise DataError(f"{flag} {source} is empty: there is no text in it to train on")
    return documents


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


def held_out_every(eval_fraction: float) -> int:
    """Every how many documents one is held out for ``--eval-fraction``: 0.05 -> every 20th."""
    if not 0 < eval_fraction < 1:
        raise DataError(f"--eval-fraction must be between 0 and 1, got {eval_fraction}")
    return max(2, round(1 / eval_fraction))


def is_held_out(index: int, every: int) -> bool:
    """Whether document ``index`` (from 0) is held out when every ``every``-th one is."""
    return index % every == every - 1


def split_train_eval(texts: list[str], eval_fraction: float = 0.05) -> tuple[list[str], list[str]]:
    """Hold out every ``1/eval_fraction``-th document (spread over the corpus, deterministic).

    A corpus that is a single document is split by characters instead, so that one text file
    still yields an evaluation set. A split that leaves either part empty raises a
    :class:`DataError` naming ``--eval-fraction``.
    """
    every = held_out_every(eval_fraction)
    if len(texts) == 1:
        text = texts[0]
        cut = int(len(text) * (1 - eval_fraction))
        return [text[:cut]], [text[cut:]]
    train = [text for i, text in enumerate(texts) if not is_held_out(i, every)]
    held_out = [text for i, text in enumerate(texts) if is_held_out(i, every)]
    if not held_out:
        raise DataError(
            f"--eval-fraction {eval_fraction} holds out every {every}th document, and the "
            f"{len(texts)} documents leave the held-out split empty; give more documents, a "
            "larger --eval-fraction, or --eval-dataset"
        )
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
    return check_tokenizer(tokenizer, required, source)


def check_tokenizer(
    tokenizer: PreTrainedTokenizerFast, required: tuple[str, ...], source: str | os.PathLike[str]
) -> PreTrainedTokenizerFast:
    """``tokenizer`` (from ``source``: ``--tokenizer``'s folder, or ``--init-from``'s) ready to
    train with: a :class:`DataError` when it lacks one of the ``required`` special tokens; one
    without a padding token pads with its end-of-sequence token (GPT-2's has none)."""
    missing = [name for name in required if getattr(tokenizer, f"{name}_id", None) is None]
    if missing:
        raise DataError(
            f"the tokenizer in {source} has no {', '.join(missing)}, which this recipe's "
            "examples need"
        )
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# Documents tokenized at a time by iter_blocks: one fast-tokenizer call per batch, few in memory.
TOKENIZE_BATCH = 256


def iter_blocks(
    texts: Iterable[str],
    tokenizer: PreTrainedTokenizerFast,
    block_size: int,
    *,
    masked: bool = False,
) -> Iterator[list[int]]:
    """The blocks of ``block_size`` token ids that ``texts`` make, as they are tokenized: what
    :func:`causal_lm_blocks` and :func:`masked_lm_blocks` hold, and what ``--streaming`` reads
    without holding more than a batch of documents.

    Causal (``masked=False``): each document ends with the end-of-sequence token, and the
    stream is cut into blocks. Masked: the stream is cut into ``block_size - 2`` tokens, each
    wrapped as ``[CLS] ... [SEP]``. The tokens after the last whole block are left out.
    """
    if masked and block_size < 3:
        raise DataError(f"block_size={block_size} leaves no room between [CLS] and [SEP]")
    body = block_size - 2 if masked else block_size
    ids: list[int] = []
    batch: list[str] = []

    def cut() -> Iterator[list[int]]:
        nonlocal ids
        for encoded in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            ids.extend(encoded)
            if not masked:
                ids.append(tokenizer.eos_token_id)
        whole = len(ids) // body * body
        for start in range(0, whole, body):
            piece = ids[start : start + body]
            yield [tokenizer.cls_token_id, *piece, tokenizer.sep_token_id] if masked else piece
        ids = ids[whole:]
        batch.clear()

    for text in texts:
        batch.append(text)
        if len(batch) == TOKENIZE_BATCH:
            yield from cut()
    if batch:
        yield from cut()


def _block_dataset(
    texts: list[str], tokenizer: PreTrainedTokenizerFast, block_size: int, masked: bool
) -> datasets.Dataset:
    blocks = list(iter_blocks(texts, tokenizer, block_size, masked=masked))
    if not blocks:
        tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
        raise DataError(
            f"the text holds {tokens} tokens, fewer than one block of block_size={block_size}"
        )
    return datasets.Dataset.from_dict({"input_ids": blocks})


def causal_lm_blocks(
    texts: list[str], tokenizer: PreTrainedTokenizerFast, block_size: int
) -> datasets.Dataset:
    """Tokenize ``texts`` (each document ends with ``</s>``) and cut the stream into blocks.

    Every block is exactly ``block_size`` tokens long: no padding, so every token is a training
    signal and every process of a distributed run sees the same number of tokens per batch.
    """
    return _block_dataset(texts, tokenizer, block_size, masked=False)


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
    return _block_dataset(texts, tokenizer, block_size, masked=True)


class StreamingBlocks(torch.utils.data.IterableDataset):
    """``--streaming``: the training blocks of a corpus larger than memory, tokenized as the
    loop reads them (the blocks of :func:`iter_blocks`, in the same order as the in-memory
    ones, without the held-out documents).

    ``documents`` is an ``IterableDataset`` of ``{"text": ...}`` rows (:func:`stream_documents`);
    when ``held_out_every`` is set, every such document (counted over the whole corpus) is left
    out, as :func:`split_train_eval` holds it out. The loop gives each process its own shard
    with :meth:`split_by_node` (documents, not blocks, are divided) and reads it once per epoch.
    """

    def __init__(
        self,
        documents: datasets.IterableDataset,
        tokenizer: PreTrainedTokenizerFast,
        block_size: int,
        *,
        masked: bool = False,
        held_out_every: int | None = None,
    ) -> None:
        super().__init__()
        self.documents = documents
        self.tokenizer = tokenizer
        self.block_size = block_size
        self.masked = masked
        self.held_out_every = held_out_every
        self.training_documents = documents
        if held_out_every is not None:
            every = held_out_every
            self.training_documents = documents.filter(
                lambda _, index: not is_held_out(index, every), with_indices=True
            )

    def split_by_node(self, rank: int, world_size: int) -> StreamingBlocks:
        """The share of process ``rank`` of ``world_size``: its own documents (whole files of
        the corpus when they divide evenly, else every ``world_size``-th document), through
        ``datasets.distributed.split_dataset_by_node``."""
        from datasets.distributed import split_dataset_by_node

        shard = StreamingBlocks.__new__(StreamingBlocks)
        shard.__dict__.update(self.__dict__)
        shard.training_documents = split_dataset_by_node(
            self.training_documents, rank=rank, world_size=world_size
        )
        return shard

    def __iter__(self) -> Iterator[dict[str, list[int]]]:
        texts = (row["text"] for row in self.training_documents)
        for block in iter_blocks(texts, self.tokenizer, self.block_size, masked=self.masked):
            yield {"input_ids": block}


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
