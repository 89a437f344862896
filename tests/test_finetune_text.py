"""Fine-tuning the text recipes (gpt2, bert-mlm, basicformer) from a checkpoint on the user's
own files: ``--init-from``, ``--dataset`` tables with ``--text-column``, ``--streaming``.

The checkpoints are tiny and made here: transformers' own ``GPT2LMHeadModel`` and
``BertForMaskedLM`` with random weights (and a tokenizer saved beside them, as on the Hub),
a BasicFormer folder of this project's, and, for the held-out comparison, short runs of the
recipes exported to transformers' format. The runs that train are marked ``slow`` (the
``distributed`` nox session); the ones that must stop before any work are not.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
import transformers

from scratchformers.training import python_docs_corpus, train_byte_level_bpe, train_wordpiece

if TYPE_CHECKING:
    from conftest import Launched

# The ids of the checkpoints' tokenizers: byte-level BPE (<pad> 0, <s> 1, </s> 2), WordPiece.
SPECIAL_IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}


def train(recipe: str, *argv: str | Path) -> int:
    """One run of ``recipe`` in this process (as ``scratchformers train``); its exit code.
    Accelerate's process-wide state is reset after it, so the next run starts clean."""
    from accelerate.state import AcceleratorState

    from scratchformers.training.cli import run_recipe

    try:
        return run_recipe(recipe, [str(arg) for arg in argv])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def summary(output_dir: Path) -> dict:
    return json.loads((output_dir / "run.json").read_text())["summary"]


@pytest.fixture(scope="module")
def notes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The user's file: 200 documents of the offline corpus as ``.jsonl`` rows, the text in a
    column named ``body`` (so ``--text-column body`` is needed)."""
    path = tmp_path_factory.mktemp("data") / "my_notes.jsonl"
    with path.open("w", encoding="utf-8") as file:
        for index, text in enumerate(python_docs_corpus()[:200]):
            file.write(json.dumps({"id": index, "body": text}) + "\n")
    return path


@pytest.fixture(scope="module")
def checkpoints(notes: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Reference-library checkpoints with random weights and their tokenizers: transformers'
    GPT-2 (32 positions, shorter than the preset's blocks of 64) and BERT, and this project's
    BasicFormer (which reads its own folders)."""
    from scratchformers.basicformer import BasicFormerConfig, BasicFormerForCausalLM

    root = tmp_path_factory.mktemp("checkpoints")
    texts = [json.loads(line)["body"] for line in notes.read_text().splitlines()]
    bpe = train_byte_level_bpe(texts, 512, cache_dir=root / "cache")
    wordpiece = train_wordpiece(texts, 512, cache_dir=root / "cache")
    torch.manual_seed(0)
    models = {
        "gpt2": (
            transformers.GPT2LMHeadModel(
                transformers.GPT2Config(
                    vocab_size=len(bpe), n_positions=32, n_embd=32, n_layer=2, n_head=2,
                    **SPECIAL_IDS,
                )
            ),
            bpe,
        ),
        "bert-mlm": (
            transformers.BertForMaskedLM(
                transformers.BertConfig(
                    vocab_size=len(wordpiece), hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                    pad_token_id=0,
                )
            ),
            wordpiece,
        ),
        "basicformer": (
            BasicFormerForCausalLM(
                BasicFormerConfig(
                    vocab_size=len(bpe), hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                    position_embedding_type="rotary", **SPECIAL_IDS,
                )
            ),
            bpe,
        ),
    }  # fmt: skip
    folders = {}
    for name, (model, tokenizer) in models.items():
        folders[name] = root / name
        model.save_pretrained(folders[name])
        tokenizer.save_pretrained(folders[name])
    return folders


def our_class(recipe: str) -> type[transformers.PreTrainedModel]:
    if recipe == "gpt2":
        from scratchformers.gpt2 import GPT2LMHeadModel

        return GPT2LMHeadModel
    if recipe == "bert-mlm":
        from scratchformers.bert_mlm import BertForMaskedLM

        return BertForMaskedLM
    from scratchformers.basicformer import BasicFormerForCausalLM

    return BasicFormerForCausalLM


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["gpt2", "bert-mlm", "basicformer"])
def test_a_run_that_barely_learns_keeps_the_checkpoints_weights_and_tokenizer(
    recipe: str, notes: Path, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    """Two steps at --lr 1e-12 from a checkpoint: the saved body is the checkpoint's, within
    1e-6 (every weight loaded, none started fresh), beside the checkpoint's tokenizer."""
    checkpoint, output_dir = checkpoints[recipe], tmp_path / "run"
    code = train(
        recipe, "--init-from", checkpoint, "--dataset", notes, "--text-column", "body",
        "--max-steps", "2", "--lr", "1e-12", "--warmup-steps", "0", "--batch-size", "4",
        "--output-dir", output_dir,
    )  # fmt: skip
    assert code == 0
    model_class = our_class(recipe)
    theirs = model_class.from_pretrained(checkpoint).state_dict()
    ours = model_class.from_pretrained(output_dir).state_dict()
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        torch.testing.assert_close(ours[name], tensor, atol=1e-6, rtol=0, msg=name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(output_dir)
    assert (
        tokenizer.get_vocab() == transformers.AutoTokenizer.from_pretrained(checkpoint).get_vocab()
    )
    run = json.loads((output_dir / "run.json").read_text())
    assert run["summary"]["first_eval_loss"] is not None
    assert "Fine-tuned" in (output_dir / "README.md").read_text()
    if recipe == "gpt2":
        # 32 positions: the preset's blocks of 64 are cut to the checkpoint's context length.
        assert tokenizer.model_max_length == 32


# The pretraining of the "pretrained" checkpoints: small and short, so the test is quick.
PRETRAIN = ("--max-steps", "60", "--eval-every", "60", "--batch-size", "8", "--block-size", "32",
            "--width", "64", "--vocab-size", "512", "--lr", "3e-3", "--warmup-steps", "5")  # fmt: skip


@pytest.fixture(scope="module")
def pretrained(notes: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """For each task, a run from scratch (its step-0 evaluation is a fresh start's) and the
    checkpoint it ends with, exported with ``scratchformers export`` to transformers' format,
    the tokenizer beside it."""
    from scratchformers.training.cli import main

    root = tmp_path_factory.mktemp("pretrained")
    folders = {}
    for recipe in ("gpt2", "bert-mlm"):
        folders[f"{recipe}-run"], folders[recipe] = root / f"{recipe}-run", root / recipe
        code = train(recipe, "--dataset", notes, "--text-column", "body", *PRETRAIN,
                     "--output-dir", folders[f"{recipe}-run"])  # fmt: skip
        assert code == 0
        assert main(["export", str(folders[f"{recipe}-run"]), str(folders[recipe])]) == 0
    return folders


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["gpt2", "bert-mlm"])
def test_a_pretrained_start_evaluates_far_below_a_fresh_one(
    recipe: str, notes: Path, pretrained: dict[str, Path], tmp_path: Path
) -> None:
    """The held-out loss at step 0 from the exported checkpoint (transformers' GPT2LMHeadModel
    or BertForMaskedLM, read back by the recipe) is the one its pretraining ended with, on the
    same held-out blocks (same data, tokenizer, block size and masks), and far below the
    pretraining's own step-0 loss: a fresh model's on the same data."""
    output_dir = tmp_path / "fine-tuned"
    code = train(recipe, "--dataset", notes, "--text-column", "body", "--max-steps", "1",
                 "--batch-size", "8", "--init-from", pretrained[recipe],
                 "--output-dir", output_dir)  # fmt: skip
    assert code == 0
    started, fresh = summary(output_dir), summary(pretrained[f"{recipe}-run"])
    assert started["first_eval_loss"] == pytest.approx(fresh["final_eval_loss"], abs=1e-4)
    assert started["first_eval_loss"] < fresh["first_eval_loss"] - 0.4, (started, fresh)
    first = json.loads((output_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 0 and first["eval_loss"] == started["first_eval_loss"]
    # The exported folder carries the tokenizer the run used, which the fine-tuning saves.
    vocab = transformers.AutoTokenizer.from_pretrained(pretrained[recipe]).get_vocab()
    assert transformers.AutoTokenizer.from_pretrained(output_dir).get_vocab() == vocab


def existing_run(output_dir: Path) -> dict[str, bytes]:
    """An earlier run's files in ``output_dir``, and their bytes."""
    output_dir.mkdir()
    (output_dir / "run.json").write_text(json.dumps({"recipe": "gpt2", "model": {}}))
    (output_dir / "metrics.jsonl").write_text('{"step": 0, "eval_loss": 1.0}\n')
    (output_dir / "model.safetensors").write_bytes(b"earlier weights")
    return {path.name: path.read_bytes() for path in output_dir.iterdir()}


def test_bad_data_or_checkpoint_stops_before_any_work_naming_it(
    notes: Path,
    checkpoints: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each with --overwrite over an earlier run, whose files are all still there after."""
    few = tmp_path / "few.jsonl"
    few.write_text("".join(json.dumps({"text": f"note {i} " * 20}) + "\n" for i in range(5)))
    cases: list[tuple[list[str | Path], str]] = [
        (
            ["--dataset", notes, "--init-from", checkpoints["gpt2"]],
            "--dataset {notes} has no column 'text' (its columns: id, body); name the right "
            "one with --text-column",
        ),
        (
            ["--dataset", few, "--init-from", checkpoints["gpt2"]],
            "--eval-fraction 0.05 holds out every 20th document, and the 5 documents leave the "
            "held-out split empty",
        ),
        (
            ["--dataset", notes, "--text-column", "body", "--init-from", tmp_path / "nowhere"],
            "--init-from {tmp_path}/nowhere does not exist",
        ),
        (
            ["--dataset", notes, "--text-column", "body", "--init-from", checkpoints["gpt2"],
             "--block-size", "128"],
            "--block-size 128 exceeds the context length of --init-from {gpt2} (32 "
            "positions); give at most --block-size 32",
        ),
        (
            ["--dataset", notes, "--init-from", checkpoints["gpt2"], "--width", "64"],
            "--width does not apply with --init-from",
        ),
    ]  # fmt: skip
    for index, (flags, message) in enumerate(cases):
        output_dir = tmp_path / f"earlier-{index}"
        before = existing_run(output_dir)
        assert train("gpt2", *flags, "--output-dir", output_dir, "--overwrite") == 2
        captured = capsys.readouterr()
        expected = message.format(notes=notes, tmp_path=tmp_path, gpt2=checkpoints["gpt2"])
        assert f"error: {expected}" in captured.err, captured.err
        lines = captured.err.strip().splitlines()
        # One line, the last: nothing ran after it (datasets' progress bars may come before).
        assert lines[-1].startswith("error: ") and sum(x.startswith("error") for x in lines) == 1
        assert "starting from" not in captured.out and "first evaluation" not in captured.out
        assert {path.name: path.read_bytes() for path in output_dir.iterdir()} == before


@pytest.mark.slow
def test_two_processes_stream_their_own_shards_into_one_model(
    notes: Path,
    checkpoints: dict[str, Path],
    tmp_path: Path,
    launch_two_processes: Callable[..., Launched],
) -> None:
    """accelerate launch --multi_gpu --num_processes 2 (CPU processes) of a streamed
    fine-tuning: both processes end with the same weights, and one model is written."""
    output_dir = tmp_path / "two-processes"
    launched = launch_two_processes(
        "-m", "scratchformers.gpt2.train", "--init-from", str(checkpoints["gpt2"]),
        "--dataset", str(notes), "--text-column", "body", "--streaming", "--max-steps", "3",
        "--batch-size", "8", "--eval-every", "3", "--output-dir", str(output_dir),
        timeout=300,
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr[-3000:]
    run = summary(output_dir)
    assert run["num_processes"] == 2 and run["ran"]["processes"] == "2 processes, MULTI_CPU"
    first, second = run["weight_fingerprints"]
    assert first == second
    assert sorted(p.name for p in output_dir.glob("*.safetensors")) == ["model.safetensors"]
    for rank in (0, 1):  # each process says which shard it reads, on its own stderr
        assert f"process {rank} streams shard {rank} of 2" in launched.ranks[rank].stderr
