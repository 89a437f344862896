"""The commands that use a trained folder (generate, eval, export), through the command line.

One toy run (conftest's ``toy_run``) serves the module. Its recipe is no installed entry
point, so the tests that need the command to find it install it by hand (``toy_installed``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationMixin,
    TextStreamer,
    set_seed,
)

from scratchformers.training import Recipe, loop, precision
from scratchformers.training import recipe as recipe_module
from scratchformers.training.cli import main
from scratchformers.training.commands import inference

PROMPT = "the cat sat"


def scratchformers(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    """Run the command line in this process: its exit code, stdout and stderr."""
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_error(result: tuple[int, str, str], *words: str) -> None:
    """Exit code 2, and stderr ends with one ``error:`` line holding ``words``, no traceback."""
    code, _, err = result
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in last, (word, last)


@pytest.fixture
def toy_installed(recipe: Recipe, monkeypatch: pytest.MonkeyPatch) -> None:
    """The toy recipe, as if a package declared it in the scratchformers.recipes entry points."""
    monkeypatch.setattr(recipe_module, "installed_recipes", lambda: {"toy": type(recipe)})


def copy_of(run_dir: Path, destination: Path, *without: str) -> Path:
    """A copy of the run's model folder without the files named."""
    shutil.copytree(run_dir, destination, ignore=shutil.ignore_patterns("checkpoints", *without))
    return destination


def test_the_commands_answer_help_without_torch() -> None:
    # Every command's parser is built, and nothing heavy is imported.
    code = (
        "import sys; from scratchformers.training import cli; cli.build_parser(); "
        "heavy = {'torch', 'transformers', 'accelerate', 'datasets'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_generate_streams_what_model_generate_samples(
    toy_run: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    printed: list[str] = []
    print_text = TextStreamer.on_finalized_text

    def recording(self: TextStreamer, text: str, stream_end: bool = False) -> None:
        printed.append(text)
        print_text(self, text, stream_end)

    monkeypatch.setattr(TextStreamer, "on_finalized_text", recording)
    sampling = {"temperature": 0.9, "top_k": 5, "top_p": 0.95, "repetition_penalty": 1.1}
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in sampling.items()]
    code, out, err = scratchformers(
        capsys,
        "generate",
        toy_run,
        PROMPT,
        "--seed=3",
        "--max-new-tokens=8",
        "--device=cpu",
        *flags,
    )
    assert code == 0, err

    tokenizer = AutoTokenizer.from_pretrained(toy_run)
    model = AutoModelForCausalLM.from_pretrained(toy_run).eval()
    inputs = tokenizer(PROMPT, return_tensors="pt")
    set_seed(3)
    with torch.no_grad():
        sampled = model.generate(**inputs, do_sample=True, max_new_tokens=8, **sampling)
    assert out == tokenizer.decode(sampled[0], skip_special_tokens=True) + "\n"
    assert len([text for text in printed if text]) > 2  # printed piece by piece, as it came

    # --greedy; the default 50 new tokens do not fit in the toy's context of 16: as many as fit.
    code, out, err = scratchformers(capsys, "generate", toy_run, PROMPT, "--greedy")
    assert code == 0, err
    fit = 16 - inputs["input_ids"].shape[1]
    assert f"note: generating {fit} tokens" in err
    with torch.no_grad():
        greedy = model.generate(**inputs, do_sample=False, max_new_tokens=fit)
    assert out == tokenizer.decode(greedy[0], skip_special_tokens=True) + "\n"


def test_generate_says_what_is_wrong(
    toy_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def generate(folder: Path, *argv: str) -> tuple[int, str, str]:
        return scratchformers(capsys, "generate", folder, *(argv or (PROMPT,)))

    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a model")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_error(generate(tmp_path / "missing"), "missing does not exist")
    assert_error(generate(a_file), "notes.txt is not a folder")
    assert_error(generate(empty), "empty is not a model folder (no config.json)")
    config = json.loads((toy_run / "config.json").read_text())
    for model_type, words in [
        ("scratchformers-nosuch", "pip install scratchformers-nosuch"),
        ("madeup", "neither transformers nor any installed scratchformers package"),
    ]:
        folder = copy_of(toy_run, tmp_path / model_type)
        (folder / "config.json").write_text(json.dumps({**config, "model_type": model_type}))
        assert_error(generate(folder), str(folder), words)
    no_tokenizer = copy_of(toy_run, tmp_path / "no_tokenizer", "tokenizer*")
    assert_error(generate(no_tokenizer), str(no_tokenizer), "holds no tokenizer")
    assert_error(generate(toy_run, "  "), "the prompt is empty")
    # transformers' own validation of the options together.
    assert_error(generate(toy_run, PROMPT, "--greedy", "--temperature=0.5"), "temperature")
    assert_error(generate(toy_run, "the " * 30), "the model reads at most 16")
    if not torch.cuda.is_available():
        assert_error(generate(toy_run, PROMPT, "--device=cuda"), "no cuda device")
    # Values that cannot be right are argparse's to refuse, as for any flag.
    with pytest.raises(SystemExit) as exit_info:
        generate(toy_run, PROMPT, "--temperature=0")
    assert exit_info.value.code == 2
    assert "--temperature: must be greater than 0" in capsys.readouterr().err


def test_eval_gives_the_metrics_the_run_ended_with(
    toy_run: Path, toy_installed: None, capsys: pytest.CaptureFixture[str]
) -> None:
    final = json.loads((toy_run / "run.json").read_text())["summary"]["final_metrics"]
    code, out, err = scratchformers(capsys, "eval", toy_run, "--json")
    assert code == 0, err
    metrics = json.loads(out)  # stdout holds the JSON and nothing else
    assert metrics.keys() == final.keys() == {"eval_loss", "perplexity"}
    for name, value in final.items():
        assert metrics[name] == pytest.approx(value, rel=1e-5)

    # Other batches of the same full-length blocks: the same examples, the same mean.
    code, out, err = scratchformers(capsys, "eval", toy_run, "--batch-size=2")
    assert code == 0, err
    assert "8 held-out examples of the run's data (toy recipe)" in out
    printed = float(re.search(r"eval_loss\s+([0-9.]+)", out).group(1))
    assert printed == pytest.approx(final["eval_loss"], abs=1e-4)


def test_eval_and_export_need_the_recipe_installed(
    toy_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("eval", "export"):
        argv = [name, toy_run] + ([tmp_path / "out"] if name == "export" else [])
        assert_error(
            scratchformers(capsys, *argv), "trained with the toy recipe", "no recipe named 'toy'"
        )


def test_eval_says_what_is_wrong(
    toy_run: Path, toy_installed: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    without_run = copy_of(toy_run, tmp_path / "without_run", "run.json")
    assert_error(
        scratchformers(capsys, "eval", without_run), "has no run.json", "recipe and the data"
    )
    moved = tmp_path / "moved"
    assert_error(
        scratchformers(capsys, "eval", toy_run, "--dataset", moved),
        f"dataset path {moved} does not exist",
        "give it with --dataset",
    )
    assert_error(scratchformers(capsys, "eval", toy_run, "--batch-size=0"), "--batch-size")


def test_export_refuses_what_it_cannot_do_and_changes_nothing(
    toy_run: Path, toy_installed: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def export(folder: Path, out: Path) -> tuple[int, str, str]:
        return scratchformers(capsys, "export", folder, out)

    out = tmp_path / "exports" / "toy"
    # The toy recipe trains transformers' own GPT-2: nothing to export to.
    assert_error(export(toy_run, out), "the toy recipe's models mirror no transformers class")
    assert not out.parent.exists() or not list(out.parent.iterdir())  # nor a half-written OUT
    # A format the recipe does not offer is named, with the ones it does.
    assert_error(
        scratchformers(capsys, "export", toy_run, out, "--format", "onnx"),
        "--format onnx",
        "the toy recipe's models export as transformers",
    )
    assert not out.exists()

    without_run = copy_of(toy_run, tmp_path / "without_run", "run.json")
    assert_error(export(without_run, out), "has no run.json", "the recipe")
    assert_error(export(tmp_path / "missing", out), "does not exist")

    # An OUT that holds anything is left exactly as it is.
    other_model = copy_of(toy_run, tmp_path / "other_model")
    before = sorted((path.name, path.stat().st_mtime_ns) for path in other_model.iterdir())
    assert_error(export(toy_run, other_model), f"{other_model} already holds a model")
    assert sorted((path.name, path.stat().st_mtime_ns) for path in other_model.iterdir()) == before
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    assert_error(export(toy_run, notes), "is not empty")
    assert_error(export(toy_run, notes / "todo.txt"), "is a file")
    assert (notes / "todo.txt").read_text() == "keep me"


@pytest.fixture
def generating_dtypes(monkeypatch: pytest.MonkeyPatch) -> list[torch.dtype]:
    """The dtype of every model that ``generate()`` runs on, as it runs."""
    seen: list[torch.dtype] = []
    generate = GenerationMixin.generate

    def recording(self: GenerationMixin, *args: object, **kwargs: object) -> object:
        seen.append(self.dtype)
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", recording)
    return seen


def test_generate_in_bfloat16_is_the_model_in_bfloat16(
    toy_run: Path, capsys: pytest.CaptureFixture[str], generating_dtypes: list[torch.dtype]
) -> None:
    argv = ("generate", toy_run, PROMPT, "--greedy", "--max-new-tokens=8", "--device=cpu")
    code, out, err = scratchformers(capsys, *argv, "--dtype=bfloat16")
    assert code == 0, err
    assert "running the model in bfloat16 (--dtype)" in err
    assert generating_dtypes == [torch.bfloat16]

    tokenizer = AutoTokenizer.from_pretrained(toy_run)
    model = AutoModelForCausalLM.from_pretrained(toy_run).eval()
    inputs = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        full = model.generate(**inputs, do_sample=False, max_new_tokens=8)
        half = model.to(torch.bfloat16).generate(**inputs, do_sample=False, max_new_tokens=8)
    assert out == tokenizer.decode(half[0], skip_special_tokens=True) + "\n"
    new = slice(inputs["input_ids"].shape[1], None)
    assert float((half[:, new] == full[:, new]).float().mean()) >= 0.75


def test_generate_picks_bfloat16_by_itself_where_training_would(
    toy_run: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    generating_dtypes: list[torch.dtype],
) -> None:
    argv = ("generate", toy_run, PROMPT, "--greedy", "--max-new-tokens=4", "--device=cpu")
    # A CPU with AMX, and the toy's 32-wide layers counted as wide enough.
    monkeypatch.setattr(precision, "fast_bf16_reason", lambda device: "this CPU has AMX")
    monkeypatch.setattr(precision, "BF16_MIN_HIDDEN_SIZE", 16)
    code, _, err = scratchformers(capsys, *argv)
    assert code == 0, err
    assert "running the model in bfloat16 (this CPU has AMX; " in err
    assert "--dtype float32 to change it)" in err
    # The same machine with a threshold over the toy's width: the toy is too narrow.
    monkeypatch.setattr(precision, "BF16_MIN_HIDDEN_SIZE", 64)
    code, _, err = scratchformers(capsys, *argv)
    assert code == 0, err
    assert "running the model in float32 (the model's layers are" in err
    assert generating_dtypes == [torch.bfloat16, torch.float32]


def test_default_inference_dtype_follows_the_bf16_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(96, 96), torch.nn.Linear(96, 8))
    monkeypatch.setattr(precision, "BF16_MIN_HIDDEN_SIZE", 64)
    monkeypatch.setattr(precision, "hidden_width", lambda model: 96)
    monkeypatch.setattr(precision, "fast_bf16_reason", lambda device: None)
    dtype, why = inference.default_inference_dtype(model)
    assert dtype == torch.float32 and why == "bfloat16 is not fast on this cpu"
    monkeypatch.setattr(precision, "fast_bf16_reason", lambda device: "AVX512-BF16")
    assert inference.default_inference_dtype(model)[0] == torch.bfloat16
    monkeypatch.setattr(precision, "hidden_width", lambda model: 32)
    dtype, why = inference.default_inference_dtype(model)
    assert dtype == torch.float32 and "32 wide" in why


def test_eval_in_bfloat16_is_close_and_has_no_autocast_on_top(
    toy_run: Path,
    toy_installed: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[torch.dtype, str]] = []
    evaluate = loop.evaluate

    def recording(recipe: Recipe, model: torch.nn.Module, batches: Any, accelerator: Any) -> Any:
        seen.append((next(model.parameters()).dtype, accelerator.mixed_precision))
        return evaluate(recipe, model, batches, accelerator)

    monkeypatch.setattr(loop, "evaluate", recording)
    final = json.loads((toy_run / "run.json").read_text())["summary"]["final_metrics"]
    code, out, err = scratchformers(capsys, "eval", toy_run, "--json", "--dtype", "bfloat16")
    assert code == 0, err
    assert "running the model in bfloat16 (--dtype)" in err
    assert seen == [(torch.bfloat16, "no")]
    metrics = json.loads(out)
    assert metrics["eval_loss"] == pytest.approx(final["eval_loss"], rel=1e-2)
    assert metrics["eval_loss"] != pytest.approx(final["eval_loss"], rel=1e-7)  # not float32


def test_cast_floating_casts_float_inputs_only() -> None:
    batch = {
        "pixel_values": torch.rand(2, 3),
        "input_ids": torch.ones(2, 3, dtype=torch.long),
        "labels": [torch.rand(2), torch.tensor([1, 2])],
        "names": "kept",
    }
    cast = inference.cast_floating(batch, torch.bfloat16)
    assert cast["pixel_values"].dtype == torch.bfloat16
    assert torch.equal(cast["pixel_values"], batch["pixel_values"].to(torch.bfloat16))
    assert cast["input_ids"] is batch["input_ids"]
    assert [t.dtype for t in cast["labels"]] == [torch.bfloat16, torch.long]
    assert cast["names"] == "kept"


@pytest.mark.parametrize("name", ["generate", "eval"])
def test_bad_dtype_and_quantize_values_are_refused(
    name: str,
    toy_run: Path,
    toy_installed: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [name, toy_run] + ([PROMPT, "--device=cpu"] if name == "generate" else [])
    for flag, value in [("--dtype", "float64"), ("--quantize", "int4")]:
        with pytest.raises(SystemExit) as exit_info:
            scratchformers(capsys, *argv, flag, value)
        assert exit_info.value.code == 2
        assert f"argument {flag}: invalid choice: '{value}'" in capsys.readouterr().err
    if not torch.accelerator.is_available():
        assert_error(
            scratchformers(capsys, *argv, "--dtype=float16"), "--dtype float16 needs a GPU"
        )
