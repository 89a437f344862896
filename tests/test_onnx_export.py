"""``scratchformers export --format onnx``: each recipe's graphs, run by onnxruntime, give the
PyTorch model's outputs to 1e-4 (max abs difference, fp32).

The models are small, odd-sized configs with re-drawn weights (no training: parity needs
none). Each is written by its recipe's ``"onnx"`` export format, which checks itself on two
shapes; the test then runs the files on a third (batch 4, length 9: neither the export's 2 x 7
nor the checks') and compares with the model's own forward, not the graph's wrapper: CLIP's
``CLIPModel`` output, and the encoder-decoder's full forward against the encoder and decoder
graphs chained. The command itself, and the gpt2 README's decoding loop, run on a trained
folder in ``test_commands.py``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
import torch

from scratchformers.core_attention.testing import randomize
from scratchformers.training.onnx_export import (
    INSTALL_HINT,
    METADATA_FILE,
    TOLERANCE,
    OnnxGraph,
    OnnxMismatchError,
    image_example,
    token_example,
    write_onnx,
)
from scratchformers.training.recipe import load_recipe

BATCH, LENGTH = 4, 9  # neither the export's shape nor the export's own checks'
VOCAB = 97
IMAGE = 20


def gpt2() -> torch.nn.Module:
    from scratchformers.gpt2 import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=VOCAB, n_positions=32, n_embd=40, n_layer=2, n_head=5, pad_token_id=0
    )
    config.bos_token_id = config.eos_token_id = VOCAB - 1
    return GPT2LMHeadModel(config)


def bert_config() -> Any:
    from scratchformers.bert_mlm import BertConfig

    return BertConfig(
        vocab_size=VOCAB,
        hidden_size=36,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=52,
        max_position_embeddings=32,
        pad_token_id=0,
    )


def bert_mlm() -> torch.nn.Module:
    from scratchformers.bert_mlm import BertForMaskedLM

    return BertForMaskedLM(bert_config())


def bert_classifier() -> torch.nn.Module:
    from scratchformers.bert_mlm import BertForSequenceClassification

    config = bert_config()
    config.num_labels = 3
    config.id2label = {0: "negative", 1: "neutral", 2: "positive"}
    config.label2id = {name: index for index, name in config.id2label.items()}
    return BertForSequenceClassification(config)


def vit() -> torch.nn.Module:
    from scratchformers.vit import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=IMAGE,
        patch_size=5,
        num_channels=3,
        hidden_size=36,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=52,
        num_labels=5,
    )
    return ViTForImageClassification(config)


def clip() -> torch.nn.Module:
    from scratchformers.clip import CLIPConfig, CLIPModel

    text = {
        "vocab_size": VOCAB,
        "hidden_size": 36,
        "intermediate_size": 52,
        "num_hidden_layers": 2,
        "num_attention_heads": 3,
        "max_position_embeddings": 16,
        "eos_token_id": VOCAB - 1,
        "bos_token_id": VOCAB - 2,
        "pad_token_id": 0,
    }
    vision = {
        "image_size": IMAGE,
        "patch_size": 5,
        "hidden_size": 40,
        "intermediate_size": 56,
        "num_hidden_layers": 2,
        "num_attention_heads": 5,
    }
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24))


def encdec(**options: Any) -> torch.nn.Module:
    """BART's options, or what ``options`` changes."""
    from scratchformers.encdec import EncDecConfig, EncDecForConditionalGeneration

    config = EncDecConfig(
        vocab_size=VOCAB,
        d_model=36,
        encoder_layers=2,
        decoder_layers=3,
        encoder_attention_heads=3,
        decoder_attention_heads=3,
        encoder_ffn_dim=52,
        decoder_ffn_dim=52,
        max_position_embeddings=32,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        **options,
    )
    return EncDecForConditionalGeneration(config)


def marian() -> torch.nn.Module:
    """Marian's options: sinusoidal positions (a table computed, not stored), scaled
    embeddings, swish, and pre-norm layers as a trained-here variant may have."""
    return encdec(
        position_embedding_type="sinusoidal",
        scale_embedding=True,
        activation_function="swish",
        layernorm_embedding=False,
        norm_position="pre",
    )


# recipe name -> (the model, the graph files the recipe writes)
MODELS: dict[str, tuple[str, Callable[[], torch.nn.Module], tuple[str, ...]]] = {
    "gpt2": ("gpt2", gpt2, ("model", "model_with_past")),
    "bert-mlm": ("bert-mlm", bert_mlm, ("model",)),
    "bert-classifier": ("lora", bert_classifier, ("model",)),
    "vit": ("vit", vit, ("model",)),
    "clip": ("clip", clip, ("text_model", "vision_model")),
    "encdec": ("encdec", encdec, ("encoder", "decoder")),
    "encdec-marian": ("encdec", marian, ("encoder", "decoder")),
}


def real(values: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The values at the real tokens' positions (all of them without a mask)."""
    if mask is None:
        return values.reshape(-1)
    return values[mask.astype(bool)]


@pytest.mark.parametrize(
    "kind",
    # Marian's options take the same graph code as BART's: their run goes to the slow session,
    # to keep the integration session's time for what only it covers.
    [pytest.param(k, marks=pytest.mark.slow) if k == "encdec-marian" else k for k in MODELS],
)
def test_onnxruntime_gives_the_model_s_outputs(kind: str, tmp_path: Path) -> None:
    recipe_name, build, names = MODELS[kind]
    model = randomize(build(), seed=1).eval()
    metadata = load_recipe(recipe_name).export_formats()["onnx"].write(model, tmp_path)

    # The files and their description.
    assert {path.name for path in tmp_path.iterdir()} == {f"{n}.onnx" for n in names} | {
        METADATA_FILE
    }
    assert json.loads((tmp_path / METADATA_FILE).read_text()) == metadata
    for name in names:
        graph = metadata["graphs"][name]
        assert graph["file"] == f"{name}.onnx" and graph["tolerance"] == TOLERANCE
        assert max(graph["max_abs_difference"].values()) <= TOLERANCE
        assert all(i["shape"][0] == "batch" for i in graph["inputs"].values())  # dynamic

    sessions = {
        name: onnxruntime.InferenceSession(str(tmp_path / f"{name}.onnx")) for name in names
    }

    def run(name: str, **inputs: torch.Tensor) -> list[np.ndarray]:
        return sessions[name].run(None, {k: v.numpy() for k, v in inputs.items()})

    # A third shape, against the model's own forward: (actual, expected, real-token mask).
    compared: list[tuple[str, np.ndarray, torch.Tensor, torch.Tensor | None]] = []
    with torch.no_grad():
        if kind == "gpt2":
            inputs = token_example(VOCAB, BATCH, LENGTH, padding="left")
            expected = model(**inputs).logits
            mask = inputs["attention_mask"]
            (logits,) = run("model", **inputs)
            compared.append(("logits", logits, expected, mask))
            # With the cache: the first 6 tokens from an empty cache (5 heads of 8), then the
            # rest fed with the cache that call gave, against the whole forward's logits.
            names = [f"{layer}.{kv}" for layer in range(2) for kv in ("key", "value")]
            ids, cut = inputs["input_ids"], 6
            empty = {f"past_key_values.{name}": torch.zeros(BATCH, 5, 0, 8) for name in names}
            first = run(
                "model_with_past", input_ids=ids[:, :cut], attention_mask=mask[:, :cut], **empty
            )
            presents = zip(names, first[1:], strict=True)
            cache = {f"past_key_values.{n}": torch.from_numpy(v) for n, v in presents}
            second = run("model_with_past", input_ids=ids[:, cut:], attention_mask=mask, **cache)
            assert second[1].shape == (BATCH, 5, LENGTH, 8)  # present.0.key: every position
            both = np.concatenate([first[0], second[0]], axis=1)
            compared.append(("logits from the cache", both, expected, mask))
        elif kind.startswith("bert"):
            inputs = token_example(VOCAB, BATCH, LENGTH)
            inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
            inputs["token_type_ids"][:, 4:] = 1
            (logits,) = run("model", **inputs)
            mask = inputs["attention_mask"] if kind == "bert-mlm" else None
            compared.append(("logits", logits, model(**inputs).logits, mask))
            assert logits.shape == (BATCH, LENGTH, VOCAB) if mask is not None else (BATCH, 3)
        elif kind == "vit":
            pixels = image_example(BATCH, 3, IMAGE, seed=5)
            (logits,) = run("model", **pixels)
            compared.append(("logits", logits, model(**pixels).logits, None))
        elif kind == "clip":
            text = token_example(VOCAB, BATCH, LENGTH, pad_token_id=0, end_token_id=VOCAB - 1)
            pixels = image_example(BATCH + 1, 3, IMAGE, seed=5)
            (text_embeds,) = run("text_model", **text)
            (image_embeds,) = run("vision_model", **pixels)
            expected = model(**text, **pixels)
            compared += [
                ("text_embeds", text_embeds, expected.text_embeds, None),
                ("image_embeds", image_embeds, expected.image_embeds, None),
            ]
            # The temperature beside them turns the embeddings into CLIP's logits.
            logits = metadata["logit_scale"] * image_embeds @ text_embeds.T
            compared.append(("logits_per_image", logits, expected.logits_per_image, None))
        else:  # encdec: the two graphs chained, against the full forward
            source = token_example(VOCAB, BATCH, LENGTH + 2, pad_token_id=1)
            target = token_example(VOCAB, BATCH, LENGTH - 3, pad_token_id=None)["input_ids"]
            target[:, 0] = 2
            (states,) = run("encoder", **source)
            (logits,) = run(
                "decoder",
                decoder_input_ids=target,
                encoder_hidden_states=torch.from_numpy(states),
                encoder_attention_mask=source["attention_mask"],
            )
            expected = model(**source, decoder_input_ids=target, use_cache=False)
            compared += [
                (
                    "encoder last_hidden_state",
                    states,
                    expected.encoder_last_hidden_state,
                    source["attention_mask"],
                ),
                ("logits", logits, expected.logits, None),
            ]
    for what, actual, expected, mask in compared:
        mask_np = None if mask is None else mask.numpy()
        ours, theirs = real(expected.numpy(), mask_np), real(actual, mask_np)
        assert actual.shape == tuple(expected.shape), what
        assert ours.std() > 1e-3, f"{what}: degenerate outputs prove nothing"
        difference = float(np.abs(ours - theirs).max())
        print(f"onnx {kind} {what}: max abs difference {difference:.2e}")  # shown with -s
        assert difference <= TOLERANCE, f"{kind} {what}: {difference:.2e}"


def test_a_graph_that_computes_something_else_is_refused(tmp_path: Path) -> None:
    """The export's own check fails loudly when onnxruntime disagrees with PyTorch: here a
    module that adds 0.01 only while torch.export traces it."""

    class Drifts(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.scale + (0.01 if torch.compiler.is_compiling() else 0.0)

    module = Drifts()
    graph = OnnxGraph(
        name="drifts",
        module=module,
        forward=lambda pixel_values: {"out": module(pixel_values)},
        example=lambda batch, length: image_example(batch, 1, 4),
        dynamic_axes={"pixel_values": {0: "batch"}},
    )
    with pytest.raises(OnnxMismatchError, match=r"drifts.onnx: output out .* differs .* by 1"):
        write_onnx([graph], tmp_path)


def test_without_the_extra_the_export_names_the_install_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime fails
    export = load_recipe("vit").export_formats()["onnx"]
    with pytest.raises(ImportError, match=r"needs onnxruntime") as error:
        export.write(vit().eval(), tmp_path)
    assert INSTALL_HINT in str(error.value)
    assert not list(tmp_path.iterdir())
