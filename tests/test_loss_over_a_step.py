"""The loss of an optimizer step is the mean over every loss-bearing item of the step, however
the step is cut: one batch of 16, two accumulated batches of 8, or two processes with 8 each
give the same gradients, for the bert-mlm recipe's masked-LM loss and the encdec recipe's
label-smoothed seq2seq loss.

The examples are chosen so that the cut matters: the first 8 hold few real targets and the
last 8 many, so averaging each micro-batch's mean (the old loop) would weigh the first 8's
targets several times more than the last 8's. The one-process tests run in the integration
session; the two-process one starts two gloo processes with torchrun (``slow``: the
distributed session). This file is also the script those processes run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

BATCH = 16
HALF = BATCH // 2
VOCAB = 97
TOLERANCE = 1e-5


def _bert() -> tuple[Any, torch.nn.Module, dict[str, torch.Tensor], torch.Tensor]:
    """The bert-mlm recipe, a tiny BERT, a masked batch, and the batch's loss as BERT defines
    it: the mean cross entropy over every masked token of the 16 blocks."""
    from scratchformers.bert_mlm import BertConfig, BertForMaskedLM
    from scratchformers.recipes.bert_mlm import BertMLMRecipe

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=36,
        num_attention_heads=3,
        num_hidden_layers=2,
        intermediate_size=52,
        max_position_embeddings=24,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
    )
    model = BertForMaskedLM(config)
    generator = torch.Generator().manual_seed(1)
    length = 13
    input_ids = torch.randint(5, VOCAB, (BATCH, length), generator=generator)
    lengths = torch.tensor([13, 9, 11, 7] * 4)
    attention_mask = (torch.arange(length) < lengths[:, None]).long()
    input_ids[attention_mask == 0] = 0
    labels = torch.full_like(input_ids, -100)
    for row in range(BATCH):
        targets = 1 if row < HALF else 6  # few masked tokens in the first half, many after
        positions = torch.randperm(int(lengths[row]) - 1, generator=generator)[:targets] + 1
        labels[row, positions] = input_ids[row, positions]
        input_ids[row, positions] = 4  # [MASK]
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    return BertMLMRecipe(), model, batch, _reference_bert_loss


def _reference_bert_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)


SMOOTHING = 0.1


def _encdec() -> tuple[Any, torch.nn.Module, dict[str, torch.Tensor], torch.Tensor]:
    """The encdec recipe, a tiny BART-layout model, a padded batch of sources and targets,
    and the batch's loss: the label-smoothed cross entropy over every real target token."""
    from scratchformers.encdec import EncDecConfig, EncDecForConditionalGeneration
    from scratchformers.recipes.encdec import EncDecRecipe

    torch.manual_seed(0)
    config = EncDecConfig(
        vocab_size=VOCAB,
        d_model=36,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=3,
        decoder_attention_heads=3,
        encoder_ffn_dim=44,
        decoder_ffn_dim=52,
        max_position_embeddings=24,
        dropout=0.0,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
    )
    model = EncDecForConditionalGeneration(config)
    generator = torch.Generator().manual_seed(2)
    input_ids = torch.randint(4, VOCAB, (BATCH, 10), generator=generator)
    source_lengths = torch.tensor([10, 6, 8, 4] * 4)
    attention_mask = (torch.arange(10) < source_lengths[:, None]).long()
    input_ids[attention_mask == 0] = 1
    labels = torch.randint(4, VOCAB, (BATCH, 9), generator=generator)
    target_lengths = torch.tensor([2] * HALF + [9, 8, 7, 9, 6, 9, 8, 9])  # short, then long
    labels[torch.arange(9) >= target_lengths[:, None]] = -100
    recipe = EncDecRecipe()
    recipe.label_smoothing = SMOOTHING  # what build_data reads from --label-smoothing
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    return recipe, model, batch, _reference_seq2seq_loss


def _reference_seq2seq_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(**batch).logits
    return F.cross_entropy(
        logits.flatten(0, 1),
        batch["labels"].flatten(),
        ignore_index=-100,
        label_smoothing=SMOOTHING,
    )


CASES: dict[str, Callable[[], tuple[Any, torch.nn.Module, dict[str, torch.Tensor], Any]]] = {
    "bert-mlm": _bert,
    "encdec": _encdec,
}


def _rows(batch: dict[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
    return {key: value[start:stop] for key, value in batch.items()}


def _reference_gradients(case: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of the whole batch of 16, as the model family defines it, and its gradients."""
    _, model, batch, reference_loss = CASES[case]()
    loss = reference_loss(model, batch)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def _step_gradients(
    case: str, micro_batches: Callable[[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loop's loss and gradients of one optimizer step over this process's micro-batches."""
    from accelerate import Accelerator

    from scratchformers.training.loop import accumulate_gradients

    recipe, model, batch, _ = CASES[case]()
    accelerator = Accelerator(cpu=True)
    prepared = accelerator.prepare(model)
    loss = accumulate_gradients(recipe, prepared, micro_batches(batch), accelerator)
    return loss, {name: p.grad.clone() for name, p in model.named_parameters()}


def _largest_difference(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> float:
    assert ours.keys() == theirs.keys()
    return max(float((ours[name] - theirs[name]).abs().max()) for name in ours)


@pytest.fixture
def _fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.usefixtures("_fresh_accelerate_state")
@pytest.mark.parametrize("case", sorted(CASES))
def test_one_batch_and_two_accumulated_halves_give_the_same_gradients(case: str) -> None:
    recipe, _, batch, _ = CASES[case]()
    first, second = _rows(batch, 0, HALF), _rows(batch, HALF, BATCH)
    # The cut matters: the halves hold very different numbers of real targets.
    assert 3 * recipe.count_loss_items(first) < recipe.count_loss_items(second)

    expected_loss, expected = _reference_gradients(case)
    whole_loss, whole = _step_gradients(case, lambda batch: [batch])
    halves_loss, halves = _step_gradients(case, lambda batch: [first, second])

    assert abs(float(whole_loss) - float(expected_loss)) < TOLERANCE
    assert abs(float(halves_loss) - float(expected_loss)) < TOLERANCE
    assert _largest_difference(whole, expected) < TOLERANCE
    assert _largest_difference(halves, expected) < TOLERANCE
    # Not vacuous: averaging the two halves' own means gives another gradient.
    assert max(p.abs().max() for p in expected.values()) > 1e-3
    _, model, _, reference_loss = CASES[case]()
    ((reference_loss(model, first) + reference_loss(model, second)) / 2).backward()
    averaged = {name: p.grad for name, p in model.named_parameters()}
    assert _largest_difference(averaged, expected) > 100 * TOLERANCE


def worker() -> None:
    """One of two processes: its half of the batch, one step through the loop's function; the
    result goes to a file of its own (two processes' lines would interleave on stdout)."""
    from accelerate import Accelerator

    rank = int(os.environ["RANK"])
    results = {}
    for case in sorted(CASES):
        expected_loss, expected = _reference_gradients(case)
        Accelerator(cpu=True)  # joins the gloo group torchrun set up
        loss, gradients = _step_gradients(
            case, lambda batch: [_rows(batch, rank * HALF, (rank + 1) * HALF)]
        )
        results[case] = {
            "loss": float(loss),
            "expected_loss": float(expected_loss),
            "largest_gradient_difference": _largest_difference(gradients, expected),
        }
    Path(f"rank{rank}.json").write_text(json.dumps(results))


@pytest.mark.slow
def test_two_processes_of_eight_give_the_one_batch_gradients(
    two_processes: Callable[[str], Path],
) -> None:
    folder = two_processes(__file__)
    for rank in (0, 1):
        results = json.loads((folder / f"rank{rank}.json").read_text())
        for case, figures in results.items():
            assert abs(figures["loss"] - figures["expected_loss"]) < TOLERANCE, (rank, case)
            assert figures["largest_gradient_difference"] < TOLERANCE, (rank, case, figures)


if __name__ == "__main__":
    worker()
