"""A save-load round trip of one package's main class, run by the ``wheels`` nox session in a
venv that holds that package's wheel alone (with its in-repo siblings and locked dependencies).

An import alone does not prove that a wheel works on its own: lora's wheel imported fine but
could not save an adapter, because safetensors needs numpy to write torch tensors and nothing in
lora's dependencies brought it. So each package saves what its users save, loads it back in a
fresh object, and checks that the outputs are the same. Only the package and its declared
dependencies may be imported here: no test library, no other model package.

Usage: ``python tests/wheel_round_trip.py PACKAGE`` (a folder name under ``packages/``).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch


def _same(first: torch.Tensor, second: torch.Tensor, what: str) -> None:
    if not torch.equal(first, second):
        difference = (first - second).abs().max().item()
        raise SystemExit(f"{what}: the reloaded output differs (max {difference:.3g})")


def _model_round_trip(model_class: type, config: object, inputs: dict, folder: Path) -> None:
    """save_pretrained, from_pretrained, and the same first output."""
    torch.manual_seed(0)
    model = model_class(config).eval()
    model.save_pretrained(folder)
    again = model_class.from_pretrained(folder).eval()
    with torch.no_grad():
        _same(model(**inputs)[0], again(**inputs)[0], model_class.__name__)


def core_attention(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    from scratchformers.core_attention import Attention

    torch.manual_seed(0)
    layer = Attention(40, 4, 2, is_causal=True).eval()
    save_file(layer.state_dict(), folder / "attention.safetensors")
    again = Attention(40, 4, 2, is_causal=True).eval()
    again.load_state_dict(load_file(folder / "attention.safetensors"))
    hidden = torch.randn(2, 7, 40)
    with torch.no_grad():
        _same(layer(hidden)[0], again(hidden)[0], "Attention")


def training(folder: Path) -> None:
    from accelerate import Accelerator

    from scratchformers.training.checkpoints import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(6, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    model(torch.randn(4, 6)).sum().backward()
    optimizer.step()
    saved = {name: value.clone() for name, value in model.state_dict().items()}
    checkpoint = save_checkpoint(accelerator, folder, step=1, state={"epoch": 0}, keep=1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    state = load_checkpoint(accelerator, checkpoint)
    for name, value in model.state_dict().items():
        _same(saved[name], value, f"training checkpoint {name}")
    if state["step"] != 1:
        raise SystemExit(f"training checkpoint: step {state['step']} came back, not 1")


def lora(folder: Path) -> None:
    from scratchformers.lora import LoraConfig, inject, load_adapter, save_adapter

    def base() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.GELU(), torch.nn.Linear(10, 3))

    model = inject(base(), LoraConfig(r=2, target_modules=["0", "2"]))
    with torch.no_grad():  # a fresh adapter's B is zero: make it change the output
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_()
    save_adapter(model, folder)
    again = load_adapter(base(), folder)
    inputs = torch.randn(4, 6)
    with torch.no_grad():
        _same(model(inputs), again(inputs), "lora adapter")
        if torch.equal(again(inputs), base()(inputs)):
            raise SystemExit("lora adapter: the loaded adapter changes nothing")


def _ids(vocab: int, batch: int = 2, length: int = 7) -> torch.Tensor:
    return torch.randint(3, vocab, (batch, length), generator=torch.Generator().manual_seed(1))


def _pixels(size: int) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def gpt2(folder: Path) -> None:
    from scratchformers.gpt2 import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=101, n_embd=48, n_head=3, n_layer=2, n_positions=40)
    _model_round_trip(GPT2LMHeadModel, config, {"input_ids": _ids(101)}, folder)


def basicformer(folder: Path) -> None:
    from scratchformers.basicformer import BasicFormerConfig, BasicFormerForCausalLM

    config = BasicFormerConfig(
        vocab_size=101,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=3,
        num_key_value_heads=1,
        max_position_embeddings=64,
    )
    _model_round_trip(BasicFormerForCausalLM, config, {"input_ids": _ids(101)}, folder)


def bert_mlm(folder: Path) -> None:
    from scratchformers.bert_mlm import BertConfig, BertForMaskedLM

    config = BertConfig(
        vocab_size=211,
        hidden_size=36,
        num_attention_heads=3,
        num_hidden_layers=2,
        intermediate_size=52,
        max_position_embeddings=40,
    )
    _model_round_trip(BertForMaskedLM, config, {"input_ids": _ids(211)}, folder)


def vit(folder: Path) -> None:
    from scratchformers.vit import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=20,
        patch_size=4,
        hidden_size=36,
        num_attention_heads=3,
        num_hidden_layers=2,
        intermediate_size=52,
        num_labels=5,
    )
    _model_round_trip(ViTForImageClassification, config, {"pixel_values": _pixels(20)}, folder)


def vitmae(folder: Path) -> None:
    from scratchformers.vitmae import ViTMAEConfig, ViTMAEForPreTraining

    config = ViTMAEConfig(
        image_size=24,
        patch_size=4,
        hidden_size=36,
        num_attention_heads=3,
        num_hidden_layers=2,
        intermediate_size=52,
        decoder_hidden_size=20,
        decoder_num_attention_heads=2,
        decoder_num_hidden_layers=2,
        decoder_intermediate_size=28,
    )
    noise = torch.rand(2, 36, generator=torch.Generator().manual_seed(2))  # the same masking
    inputs = {"pixel_values": _pixels(24), "noise": noise}
    _model_round_trip(ViTMAEForPreTraining, config, inputs, folder)


def clip(folder: Path) -> None:
    from scratchformers.clip import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config={
            "vocab_size": 53,
            "hidden_size": 40,
            "intermediate_size": 52,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 16,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
        vision_config={
            "hidden_size": 48,
            "intermediate_size": 60,
            "num_hidden_layers": 2,
            "num_attention_heads": 3,
            "image_size": 20,
            "patch_size": 4,
        },
        projection_dim=24,
    )
    inputs = {"input_ids": _ids(53), "pixel_values": _pixels(20)}
    _model_round_trip(CLIPModel, config, inputs, folder)


def encdec(folder: Path) -> None:
    from scratchformers.encdec import EncDecConfig, EncDecForConditionalGeneration

    config = EncDecConfig(
        vocab_size=97,
        d_model=36,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=3,
        decoder_attention_heads=3,
        encoder_ffn_dim=44,
        decoder_ffn_dim=52,
        max_position_embeddings=40,
    )
    inputs = {"input_ids": _ids(97), "decoder_input_ids": _ids(97, length=5)}
    _model_round_trip(EncDecForConditionalGeneration, config, inputs, folder)


ROUND_TRIPS: dict[str, Callable[[Path], None]] = {
    "basicformer": basicformer,
    "bert-mlm": bert_mlm,
    "clip": clip,
    "core-attention": core_attention,
    "encdec": encdec,
    "gpt2": gpt2,
    "lora": lora,
    "training": training,
    "vit": vit,
    "vitmae": vitmae,
}


def main(package: str) -> None:
    if package not in ROUND_TRIPS:
        raise SystemExit(f"no round trip for package {package!r}: one of {sorted(ROUND_TRIPS)}")
    with tempfile.TemporaryDirectory() as folder:
        ROUND_TRIPS[package](Path(folder))
    print(f"{package}: saved, loaded back, same outputs")


if __name__ == "__main__":
    main(*sys.argv[1:])
