"""The Hugging Face ecosystem around the models: pipelines with the example's offline tokenizer,
and LoRA fine-tuning through peft."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from transformers import pipeline

from scratchformers.basicformer import (
    BasicFormerForCausalLM,
    BasicFormerForMaskedLM,
    BasicFormerForSeq2SeqLM,
)

# --- pipelines --------------------------------------------------------------------------------


def test_text_generation_pipeline(make_model: Callable, tokenizer) -> None:
    model = make_model(BasicFormerForCausalLM, vocab_size=len(tokenizer))
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    prompt = "The quick brown"
    options = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False}

    [result] = generator(prompt, **options)
    assert result["generated_text"].startswith(prompt)
    assert len(result["generated_text"]) > len(prompt)

    # The pipeline's tokens are the model's own greedy tokens.
    [as_ids] = generator(prompt, return_tensors=True, **options)
    encoded = tokenizer(prompt, return_tensors="pt")
    direct = model.generate(**encoded, **options)[0]
    assert as_ids["generated_token_ids"] == direct.tolist()
    new_text = tokenizer.decode(direct[encoded["input_ids"].shape[1] :], skip_special_tokens=True)
    assert result["generated_text"].replace(" ", "").endswith(new_text.replace(" ", ""))

    # Batched prompts (left-padded by the tokenizer) give each prompt's own output.
    prompts = ["The quick brown", "Attention is all you need"]
    batched = generator(prompts, batch_size=2, **options)
    alone = [generator(text, **options) for text in prompts]
    assert batched == alone


def test_fill_mask_pipeline(make_model: Callable, tokenizer) -> None:
    model = make_model(BasicFormerForMaskedLM, vocab_size=len(tokenizer))
    filler = pipeline("fill-mask", model=model, tokenizer=tokenizer)
    sentence = f"The quick {tokenizer.mask_token} fox jumps over the lazy dog."
    candidates = filler(sentence, top_k=5)
    assert len(candidates) == 5
    scores = [candidate["score"] for candidate in candidates]
    assert scores == sorted(scores, reverse=True)
    assert 0 < sum(scores) <= 1 + 1e-6

    # Scores are the model's softmax at the mask position, best first.
    encoded = tokenizer(sentence, return_tensors="pt")
    position = int((encoded["input_ids"][0] == tokenizer.mask_token_id).nonzero())
    with torch.no_grad():
        probabilities = model(**encoded).logits[0, position].softmax(-1)
    expected = probabilities.topk(5)
    assert [c["token"] for c in candidates] == expected.indices.tolist()
    torch.testing.assert_close(torch.tensor(scores), expected.values, atol=1e-6, rtol=1e-5)
    for candidate in candidates:
        assert candidate["token_str"] == tokenizer.decode([candidate["token"]])
        assert tokenizer.mask_token not in candidate["sequence"]


# --- peft -------------------------------------------------------------------------------------

TASKS = [
    (BasicFormerForCausalLM, "CAUSAL_LM"),
    (BasicFormerForSeq2SeqLM, "SEQ_2_SEQ_LM"),
    (BasicFormerForMaskedLM, None),
]


def lora_batch(model_class: type) -> dict[str, torch.Tensor]:
    ids = torch.tensor([[0, 0, 12, 34, 56, 78], [7, 8, 9, 10, 11, 13]])
    mask = (ids != 0).long()
    if model_class is BasicFormerForSeq2SeqLM:
        labels = torch.tensor([[5, 6, 7, 2], [9, 8, 7, 2]])
    elif model_class is BasicFormerForMaskedLM:
        labels = torch.full_like(ids, -100)
        labels[0, 3], labels[1, 1] = 34, 8
        ids = ids.masked_fill(labels != -100, 4)
    else:
        labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize(("model_class", "task_type"), TASKS)
def test_lora_trains_saves_and_reloads(
    make_model: Callable, tmp_path: Path, model_class: type, task_type: str | None
) -> None:
    base = make_model(model_class, position_embedding_type="rotary")
    base_state = {key: tensor.clone() for key, tensor in base.state_dict().items()}
    batch = lora_batch(model_class)
    with torch.no_grad():
        base_logits = base(**batch).logits

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type=task_type)
    model = get_peft_model(base, lora)

    # Only the LoRA matrices train: an A and a B for every q_proj and v_proj.
    targeted = [
        name for name, _ in base_state_modules(model) if name.endswith(("q_proj", "v_proj"))
    ]
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert targeted and len(trainable) == 2 * len(targeted)
    assert all("lora_A" in name or "lora_B" in name for name in trainable)
    # LoRA starts as the identity (B = 0).
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, base_logits, atol=0, rtol=0)

    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses
    model.eval()
    with torch.no_grad():
        trained_logits = model(**batch).logits
    assert (trained_logits - base_logits).abs().max() > 1e-3
    # The frozen base weights did not move.
    with model.disable_adapter(), torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, base_logits, atol=0, rtol=0)

    model.save_pretrained(tmp_path)
    files = sorted(path.name for path in tmp_path.iterdir())
    assert "adapter_model.safetensors" in files and "adapter_config.json" in files
    assert not [name for name in files if name.endswith(".bin")]
    with safe_open(tmp_path / "adapter_model.safetensors", framework="pt") as handle:
        keys = list(handle.keys())
    assert len(keys) == len(trainable)
    assert all("lora_" in key for key in keys)

    fresh = model_class(base.config.__class__(**base.config.to_diff_dict())).eval()
    fresh.load_state_dict(base_state)
    reloaded = PeftModel.from_pretrained(fresh, tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, trained_logits, atol=1e-6, rtol=0)


def base_state_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Modules of the wrapped base model that LoRA wraps (they have ``lora_A``)."""
    return [(name, module) for name, module in model.named_modules() if hasattr(module, "lora_A")]


@pytest.mark.parametrize(("model_class", "task_type"), TASKS[:2])
def test_generate_through_peft(
    make_model: Callable, padded_batch, model_class: type, task_type: str
) -> None:
    base = make_model(model_class, position_embedding_type="learned")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type=task_type)
    model = get_peft_model(base, lora)
    # Non-zero B matrices, so the adapter changes the output.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    model.eval()
    input_ids, attention_mask, _ = padded_batch((6, 3))
    options = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False}
    through_peft = model.generate(input_ids=input_ids, attention_mask=attention_mask, **options)
    with model.disable_adapter():
        without_adapter = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, **options
        )
    merged = model.merge_and_unload()
    assert type(merged) is model_class
    from_merged = merged.generate(input_ids=input_ids, attention_mask=attention_mask, **options)
    assert torch.equal(through_peft, from_merged)
    assert not torch.equal(through_peft, without_adapter)
