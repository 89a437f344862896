"""What a run leaves for people: a model card the Hub reads, the run's segments, no noise."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from transformers.utils import logging as transformers_logging

from scratchformers.training import Recipe, TrainingSettings, parse_settings, train
from scratchformers.training import checkpoints as checkpoint_module
from scratchformers.training.reporting import (
    command_line,
    finish_segments,
    segments_at_start,
    write_model_card,
)

SCRIPT = "/venv/bin/scratchformers"


def settings_for(recipe: Recipe, corpus: Path, output_dir: Path, *flags: str) -> TrainingSettings:
    return parse_settings(
        recipe, ["--dataset", str(corpus), "--output-dir", str(output_dir), *flags]
    )


def run_as_the_console_script(
    monkeypatch: pytest.MonkeyPatch, recipe: Recipe, corpus: Path, output_dir: Path, *flags: str
) -> None:
    """Train as ``scratchformers train toy <flags>`` would: that is what sys.argv says."""
    argv = ["--dataset", str(corpus), "--output-dir", str(output_dir), *flags]
    monkeypatch.setattr("sys.argv", [SCRIPT, "train", "toy", *argv])
    # A console script's __main__ has no module spec (`python -m pytest` would give one).
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", None)
    train(recipe, parse_settings(recipe, argv))


class Killed(BaseException):
    """Stands in for the process being killed (not an Exception, so nothing catches it)."""


def test_the_model_card_is_what_the_hub_reads(
    recipe: Recipe, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output_dir = tmp_path / "run"
    run_as_the_console_script(monkeypatch, recipe, corpus, output_dir, "--max-steps", "4")
    summary = json.loads((output_dir / "run.json").read_text())["summary"]

    card = ModelCard.load(output_dir / "README.md")
    data = card.data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "text-generation"  # CausalLMRecipe's
    assert data.tags == ["scratchformers", "toy"]
    assert data.datasets is None, "a local folder is not a Hub dataset"
    assert data.license is None, "the toy recipe knows no license for its weights"
    assert data.metrics == ["eval_loss", "perplexity"]
    assert data.model_name == "toy-tiny"
    results = {result.metric_type: result for result in data.eval_results}
    assert results.keys() == summary["final_metrics"].keys()
    for name, value in summary["final_metrics"].items():
        assert results[name].metric_value == pytest.approx(value, abs=1e-4)
        assert results[name].task_type == "text-generation"
    # Saved again, the metadata is the same: what the Hub would parse is what was meant.
    assert ModelCard(str(card)).data.to_dict() == data.to_dict()

    text = card.text
    command = f"scratchformers train toy --dataset {corpus} --output-dir {output_dir} --max-steps 4"
    assert f"```\n{command}\n```" in text
    assert "4 optimizer steps of 4 x 1 = 4 examples" in text
    assert f"{summary['first_eval_loss']:.3f} before training" in text
    assert (
        "![loss curve](loss_curve.png)" in text and "AutoModelForCausalLM.from_pretrained" in text
    )
    assert summary["segments"] == [
        {
            "command": command,
            "num_processes": 1,
            "started_at": summary["segments"][0]["started_at"],
            "start_step": 0,
            "end_step": 4,
            "wall_time_s": summary["wall_time_s"],
            "status": "finished",
        }
    ]
    assert summary["total_steps"] == 4 and summary["unknown_time_segments"] == 0


def test_the_card_names_a_hub_dataset_and_leaves_out_what_is_not_known(tmp_path: Path) -> None:
    summary = {
        "parameters": 1000,
        "first_eval_loss": 5.0,
        "final_eval_loss": 3.0,
        "final_metrics": {"eval_loss": 3.0},
        **finish_segments(
            segments_at_start(tmp_path / "run.json", None, command="x", num_processes=2), 7, 2.5
        ),
    }
    settings = TrainingSettings(
        recipe="demo",
        preset="tiny",
        output_dir=tmp_path,
        recipe_options={"dataset": "someone/some-corpus"},
    ).to_dict()
    common = {
        "model_name": "demo-tiny",
        "recipe": "demo",
        "preset": "tiny",
        "auto_class": "AutoModel",
        "license": "mit",
        "data_description": "a corpus",
        "settings": settings,
        "summary": summary,
        "samples": [],
    }
    card = write_model_card(tmp_path / "README.md", pipeline_tag="text-generation", **common)
    data = ModelCard.load(tmp_path / "README.md").data
    assert data.to_dict() == card.data.to_dict()
    assert data.datasets == ["someone/some-corpus"] and data.license == "mit"
    assert data.eval_results[0].dataset_type == "someone/some-corpus"
    assert "7 optimizer steps" in card.text and "on 2 processes" in card.text

    # A recipe without a Hub task: no pipeline tag, and no model-index (it needs a task).
    card = write_model_card(tmp_path / "README.md", pipeline_tag=None, **common)
    data = ModelCard.load(tmp_path / "README.md").data
    assert "pipeline_tag" not in data.to_dict() and "model-index" not in data.to_dict()
    assert data.metrics == ["eval_loss"]
    assert "Trained from scratch with scratchformers" in card.text
    assert "import scratchformers.demo  # registers" in card.text  # no model type: the recipe's
    assert "base_model" not in data.to_dict()

    # Fine-tuned from a Hub model: the card says from what, and links it as its base model;
    # from a local folder, the text says so but the metadata names no Hub model.
    for init_from, base_model in (
        ("openai-community/gpt2", "openai-community/gpt2"),
        (str(tmp_path), None),
    ):
        settings["recipe_options"] = {"dataset": "someone/some-corpus", "init_from": init_from}
        card = write_model_card(tmp_path / "README.md", pipeline_tag=None, **common)
        assert f"Fine-tuned from `{init_from}` with scratchformers" in card.text
        assert ModelCard.load(tmp_path / "README.md").data.base_model == base_model


def test_the_card_holds_the_recipes_sections_and_imports_the_models_package(
    tmp_path: Path,
) -> None:
    """A fine-tuning recipe (lora) saves another package's model (bert-mlm): the card says it
    was fine-tuned, shows the recipe's own section, and imports the package of the model."""
    summary = {
        "parameters": 10,
        "final_metrics": {},
        **finish_segments(
            segments_at_start(tmp_path / "run.json", None, command="x", num_processes=1), 3, 1.0
        ),
    }
    common = {
        "model_name": "lora-tiny",
        "recipe": "lora",
        "preset": "tiny",
        "auto_class": "AutoModelForSequenceClassification",
        "pipeline_tag": None,
        "license": None,
        "data_description": "reviews",
        "settings": TrainingSettings(recipe="lora", preset="tiny", output_dir=tmp_path).to_dict(),
        "summary": summary,
        "samples": [],
    }
    card = write_model_card(
        tmp_path / "README.md",
        sections=["## Fine-tuning", "", "| a | b |"],
        model_type="scratchformers-bert-mlm",
        trained_from_scratch=False,
        **common,
    ).text
    assert "Fine-tuned with scratchformers: recipe `lora`" in card
    assert "## Fine-tuning\n\n| a | b |" in card
    assert card.index("## Results") < card.index("## Fine-tuning") < card.index("## Use")
    assert "import scratchformers.bert_mlm  # registers" in card
    assert "import scratchformers.lora" not in card
    # transformers' own model type needs no import.
    card = write_model_card(tmp_path / "README.md", model_type="gpt2", **common).text
    assert "import scratchformers" not in card and "Trained from scratch" in card


def test_a_stopped_and_resumed_run_records_both_segments(
    recipe: Recipe, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output_dir = tmp_path / "stopped"
    real_save = checkpoint_module.save_checkpoint

    def save_then_die(accelerator, output_dir, step, state, keep):
        path = real_save(accelerator, output_dir, step, state, keep)
        if step == 8:
            raise Killed
        return path

    monkeypatch.setattr(checkpoint_module, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        run_as_the_console_script(monkeypatch, recipe, corpus, output_dir)
    # What the killed segment left: its start, known from the moment it began.
    (running,) = json.loads((output_dir / "run.json").read_text())["segments"]
    assert (running["start_step"], running["status"]) == (0, "running")

    monkeypatch.setattr(checkpoint_module, "save_checkpoint", real_save)
    run_as_the_console_script(monkeypatch, recipe, corpus, output_dir, "--resume")
    summary = json.loads((output_dir / "run.json").read_text())["summary"]

    first, second = summary["segments"]
    command = f"scratchformers train toy --dataset {corpus} --output-dir {output_dir}"
    assert (first["command"], second["command"]) == (command, f"{command} --resume")
    assert (first["start_step"], first["end_step"], first["status"]) == (0, 8, "interrupted")
    assert (second["start_step"], second["end_step"], second["status"]) == (8, 12, "finished")
    assert summary["total_steps"] == 12 == summary["steps"]
    # The interrupted segment's time runs to its checkpoint of step 8: known, and positive.
    assert first["wall_time_s"] > 0 and second["wall_time_s"] == summary["wall_time_s"]
    assert summary["total_wall_time_s"] == pytest.approx(
        first["wall_time_s"] + second["wall_time_s"]
    )
    assert summary["unknown_time_segments"] == 0

    text = ModelCard.load(output_dir / "README.md").text
    assert "2 segments" in text and "12 optimizer steps" in text
    assert f"| 1 | `{command}` | 0 to 8 |" in text
    assert f"| 2 | `{command} --resume` | 8 to 12 |" in text


def test_a_segment_killed_before_its_first_checkpoint_counts_no_steps_and_no_known_time(
    tmp_path: Path,
) -> None:
    """Segment 1 checkpoints step 4, segment 2 resumes from it and dies before saving,
    segment 3 resumes from step 4 again: segment 2 kept nothing, and its time is unknown."""
    checkpoint = tmp_path / "checkpoints" / "checkpoint-0000004"
    checkpoint.mkdir(parents=True)
    (checkpoint / checkpoint_module.STATE_FILE).write_text(json.dumps({"step": 4}))
    saved = datetime.fromtimestamp((checkpoint / checkpoint_module.STATE_FILE).stat().st_mtime, UTC)
    run_file = tmp_path / "run.json"
    one = segments_at_start(
        run_file, None, command="a", num_processes=1, started_at=saved - timedelta(seconds=30)
    )
    run_file.write_text(json.dumps({"segments": one}))
    two = segments_at_start(run_file, checkpoint, command="a --resume", num_processes=2)
    run_file.write_text(json.dumps({"segments": two}))
    three = segments_at_start(run_file, checkpoint, command="a --resume", num_processes=2)

    summary = finish_segments(three, 10, 12.0)
    first, second, third = summary["segments"]
    assert (first["end_step"], first["status"]) == (4, "interrupted")
    assert first["wall_time_s"] == pytest.approx(30, abs=0.01)
    assert (second["start_step"], second["end_step"], second["wall_time_s"]) == (4, 4, None)
    assert (third["start_step"], third["end_step"], third["status"]) == (4, 10, "finished")
    assert summary["total_steps"] == 10
    assert summary["total_wall_time_s"] == pytest.approx(42, abs=0.01)
    assert summary["unknown_time_segments"] == 1


@pytest.mark.parametrize(
    ("argv", "main_module", "environ", "expected"),
    [
        (
            [SCRIPT, "train", "basicformer", "--max-steps", "30"],
            "",  # not run with -m
            {},
            "scratchformers train basicformer --max-steps 30",
        ),
        (
            ["/site-packages/scratchformers/basicformer/train.py", "--max-steps", "6"],
            "scratchformers.basicformer.train",
            {},
            "python -m scratchformers.basicformer.train --max-steps 6",
        ),
        (
            ["/site-packages/scratchformers/basicformer/train.py", "--max-steps", "6"],
            "scratchformers.basicformer.train",
            {"ACCELERATE_MIXED_PRECISION": "no", "TORCHELASTIC_RUN_ID": "1"},
            "accelerate launch ... -m scratchformers.basicformer.train --max-steps 6",
        ),
        (
            ["train.py", "--dataset", "my corpus"],
            "",  # not run with -m
            {"TORCHELASTIC_RUN_ID": "1"},
            "torchrun ... train.py --dataset 'my corpus'",
        ),
        (["/a/b/__main__.py", "-q"], "pytest.__main__", {}, "python -m pytest -q"),
    ],
)
def test_the_command_line_is_rebuilt_from_argv(
    argv: list[str], main_module: str, environ: dict[str, str], expected: str
) -> None:
    assert command_line(argv, main_module, environ) == expected


@contextlib.contextmanager
def everything_warned() -> Iterator[list[str]]:
    """Every warning, and every log record at warning level or above from any library, issued
    inside the block; the list is complete when the block ends."""
    caught: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            caught.append(f"{record.name}: {record.getMessage()}")

    # transformers' and datasets' loggers do not propagate to the root logger.
    loggers = [logging.getLogger(name) for name in ("", "transformers", "datasets")]
    handler = Catch(level=logging.WARNING)
    for logger in loggers:
        logger.addHandler(handler)
    # transformers says some things once per process; an earlier test must not have used it up.
    transformers_logging.warning_once.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            yield caught
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    caught += [f"{w.category.__name__} at {w.filename}:{w.lineno}: {w.message}" for w in warned]


def test_a_training_run_and_its_resume_warn_about_nothing(
    recipe: Recipe, corpus: Path, tmp_path: Path
) -> None:
    with everything_warned() as caught:
        train(recipe, settings_for(recipe, corpus, tmp_path / "run", "--max-steps", "4"))
        flags = ("--max-steps", "8", "--resume")
        train(recipe, settings_for(recipe, corpus, tmp_path / "run", *flags))
    # accelerate's note that the tied lm_head is saved once is being fixed elsewhere.
    assert [line for line in caught if "Removed shared tensor" not in line] == []


RUN_CARD = """---
license: apache-2.0
library_name: transformers
pipeline_tag: image-classification
datasets:
- me/shapes
tags:
- scratchformers
- vit
model-index:
- name: vit-tiny
  results:
  - task:
      type: image-classification
    dataset:
      name: me/shapes (held-out part)
      type: me/shapes
    metrics:
    - type: accuracy
      value: 0.75
      name: accuracy
---

# vit-tiny

Trained from scratch with scratchformers: recipe `vit`, preset `tiny`.

## Results

- **accuracy**: 0.75

![loss curve](loss_curve.png)

![confusion matrix](confusion_matrix.png)

## Use

```python
model = AutoModelForImageClassification.from_pretrained("path/to/this/folder")
```
"""


def test_an_export_card_keeps_the_runs_metadata_for_any_format(tmp_path: Path) -> None:
    from scratchformers.core_attention import hub_card
    from scratchformers.training.reporting import write_export_card

    run, out = tmp_path / "run", tmp_path / "onnx-out"
    run.mkdir()
    out.mkdir()
    (run / "README.md").write_text(RUN_CARD)
    for figure in ("loss_curve.png", "confusion_matrix.png"):
        (run / figure).write_bytes(figure.encode())
    usage = [
        f"exported to {out} as ONNX; run it with",
        f'  onnxruntime.InferenceSession("{out}/model.onnx")',
    ]
    write_export_card(out, source=run, format_name="onnx", library_name="onnx", usage=usage)

    card, run_card = ModelCard.load(out / "README.md"), ModelCard(RUN_CARD)
    assert card.data.library_name == "onnx"
    for field in ("license", "datasets", "pipeline_tag", "tags", "eval_results"):
        assert getattr(card.data, field) == getattr(run_card.data, field), field
    text = card.text
    assert text.startswith("\n# vit-tiny (onnx export)\n")
    assert "written by `scratchformers export --format onnx`" in text
    assert "exported to path/to/this/folder as ONNX; run it with" in text
    assert (
        '```python\nimport onnxruntime\n\nonnxruntime.InferenceSession("path/to/this/folder/'
        in (text)
    )
    # The run's card, its headings under "The run", without its snippet for the run's folder.
    assert "## The run\n\nTrained from scratch" in text and "### Results\n" in text
    assert "AutoModelForImageClassification" not in text
    for figure in ("loss_curve.png", "confusion_matrix.png"):
        assert (out / figure).read_bytes() == figure.encode()
    # On the Hub a file path under the folder stays a path: a Hub id is none.
    pushed = str(hub_card(out / "README.md", "me/vit-onnx"))
    assert 'InferenceSession("path/to/this/folder/model.onnx")' in pushed


def test_an_export_of_a_folder_without_a_card_gets_one(tmp_path: Path) -> None:
    from scratchformers.training.reporting import write_export_card

    run, out = tmp_path / "run", tmp_path / "out"
    run.mkdir()
    out.mkdir()
    usage = [f"exported to {out}; load it with", f'  timm.create_model("hf-hub:{out}")']
    write_export_card(out, source=run, format_name="timm", library_name="timm", usage=usage)
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "timm" and card.data.tags == ["scratchformers"]
    assert card.text.startswith("\n# run (timm export)\n")
    assert "## The run" not in card.text
