"""``scratchformers generate``, ``eval`` and ``export`` on folders of the real model packages.

A GPT-2 run of a few steps at a tiny width serves the module: the commands find its code by
its model_type (scratchformers-gpt2) and its recipe by run.json, and ``export`` hands it to
transformers' own GPT2LMHeadModel and ``pipeline("text-generation")``.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import transformers

from scratchformers.training.cli import main

PROMPT = "The return statement"
ROOT = Path(__file__).parents[1]


def scratchformers(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The folder of 20 steps of the gpt2 recipe at a tiny width, trained in this process
    (the preset's context of 64 tokens: the recipe's samples at the end need that many)."""
    from accelerate.state import AcceleratorState

    from scratchformers.training import python_docs_corpus

    root = tmp_path_factory.mktemp("gpt2_commands")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(python_docs_corpus()[:40]), encoding="utf-8")
    flags = "--max-steps 20 --eval-every 10 --log-every 10 --batch-size 8 --width 32 --depth 1 "
    flags += "--heads 2 --vocab-size 512"
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("HOME", str(root / "home"))  # the tokenizer cache
            argv = ["train", "gpt2", "--output-dir", str(root / "run"), "--dataset", str(corpus)]
            assert main([*argv, *flags.split()]) == 0
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    yield root / "run"


def test_export_gives_transformers_gpt2_with_our_logits(
    gpt2_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from scratchformers.gpt2 import GPT2LMHeadModel

    out = tmp_path / "exported"
    code, printed, err = scratchformers(capsys, "export", gpt2_run, out)
    assert code == 0, err
    assert "GPT2LMHeadModel" in printed and f'pipeline("text-generation", model="{out}")' in printed
    assert json.loads((out / "config.json").read_text())["model_type"] == "gpt2"

    theirs = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    ours = GPT2LMHeadModel.from_pretrained(gpt2_run).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    batch = tokenizer(PROMPT + " is a", return_tensors="pt")
    with torch.no_grad():
        difference = (ours(**batch).logits - theirs(**batch).logits).abs().max()
    assert float(difference) <= 1e-4

    # The export holds the tokenizer: a pipeline needs nothing else.
    generator = transformers.pipeline("text-generation", model=str(out))
    text = generator(PROMPT, max_new_tokens=6, do_sample=False)[0]["generated_text"]
    prompt = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        greedy = ours.generate(**prompt, max_new_tokens=6, do_sample=False)
    assert text == tokenizer.decode(greedy[0], skip_special_tokens=True)

    # A second export into the same folder is refused.
    code, _, err = scratchformers(capsys, "export", gpt2_run, out)
    assert code == 2 and f"{out} already holds a model" in err


def readme_onnx_loops() -> list[str]:
    """The gpt2 README's greedy decoding loops in onnxruntime, as the README shows them:
    without the cache and with it."""
    readme = (ROOT / "packages/gpt2/README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    loops = [block for block in blocks if "onnxruntime" in block]
    assert len(loops) == 2, "the gpt2 README shows two onnxruntime loops"
    return loops


def test_export_to_onnx_and_the_readme_s_greedy_loop(
    gpt2_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from scratchformers.gpt2 import GPT2LMHeadModel

    out = tmp_path / "gpt2-onnx"
    # Without the [onnx] extra: one line that says how to install it, and no OUT.
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime fails
        code, _, err = scratchformers(capsys, "export", gpt2_run, out, "--format", "onnx")
    assert code == 2 and err.strip().splitlines()[-1] == (
        "error: --format onnx needs onnxruntime, which the training package's [onnx] extra "
        "installs: pip install 'scratchformers-training[onnx]'"
    )
    assert not out.exists()

    code, printed, err = scratchformers(capsys, "export", gpt2_run, out, "--format", "onnx")
    assert code == 0, err
    assert "model.onnx: input_ids, attention_mask -> logits" in printed
    assert (
        "model_with_past.onnx: input_ids, attention_mask, past_key_values.<layer>.key, "
        "past_key_values.<layer>.value -> logits, present.<layer>.key, present.<layer>.value"
    ) in printed
    assert f'onnxruntime.InferenceSession("{out / "model.onnx"}")' in printed
    files = {path.name for path in out.iterdir()}
    assert {"model.onnx", "model_with_past.onnx", "onnx.json", "tokenizer.json"} <= files
    graph = json.loads((out / "onnx.json").read_text())["graphs"]["model"]
    assert graph["inputs"]["input_ids"]["shape"] == ["batch", "sequence"]
    assert graph["max_abs_difference"]["logits"] <= 1e-4

    # The README's loops, run as written but for the folder, give generate()'s greedy tokens.
    ours = GPT2LMHeadModel.from_pretrained(gpt2_run).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(gpt2_run)
    with torch.no_grad():
        greedy = ours.generate(
            **tokenizer(PROMPT, return_tensors="pt"), max_new_tokens=8, do_sample=False
        )
    assert greedy.shape[1] > len(tokenizer(PROMPT)["input_ids"]) + 1  # it did decode
    for loop in readme_onnx_loops():
        assert loop.count('folder = "gpt2-onnx"') == 1 and f'tokenizer("{PROMPT}"' in loop
        namespace: dict[str, object] = {}
        exec(loop.replace('folder = "gpt2-onnx"', f"folder = {str(out)!r}"), namespace)
        assert namespace["ids"].tolist() == greedy.tolist()  # type: ignore[attr-defined]
        assert capsys.readouterr().out == tokenizer.decode(greedy[0]) + "\n"

    # A second export into the same folder is refused, in any format.
    code, _, err = scratchformers(capsys, "export", gpt2_run, out, "--format", "onnx")
    assert code == 2 and f"{out} is not empty" in err


def test_generate_and_eval_of_a_gpt2_run(
    gpt2_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from scratchformers.gpt2 import GPT2LMHeadModel

    code, generated, err = scratchformers(
        capsys, "generate", gpt2_run, PROMPT, "--greedy", "--max-new-tokens", "6"
    )
    assert code == 0, err
    ours = GPT2LMHeadModel.from_pretrained(gpt2_run).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(gpt2_run)
    with torch.no_grad():
        greedy = ours.generate(**tokenizer(PROMPT, return_tensors="pt"), max_new_tokens=6)
    assert generated == tokenizer.decode(greedy[0], skip_special_tokens=True) + "\n"

    code, out, err = scratchformers(capsys, "eval", gpt2_run, "--json")
    assert code == 0, err
    summary = json.loads((gpt2_run / "run.json").read_text())["summary"]
    assert json.loads(out)["eval_loss"] == pytest.approx(summary["final_eval_loss"], rel=1e-5)


def test_generate_and_eval_of_a_gpt2_run_in_int8(
    gpt2_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from scratchformers.core_attention import quantize_int8
    from scratchformers.gpt2 import GPT2LMHeadModel

    tokenizer = transformers.AutoTokenizer.from_pretrained(gpt2_run)
    prompt = tokenizer(PROMPT, return_tensors="pt")
    greedy = {"max_new_tokens": 6, "do_sample": False}
    with torch.no_grad():
        full = GPT2LMHeadModel.from_pretrained(gpt2_run).eval().generate(**prompt, **greedy)
    new = slice(prompt["input_ids"].shape[1], None)
    for dtype in ("float32", "bfloat16"):
        flags = ["--greedy", "--max-new-tokens", "6", "--quantize", "int8", "--dtype", dtype]
        code, generated, err = scratchformers(capsys, "generate", gpt2_run, PROMPT, *flags)
        assert code == 0, err
        assert "quantized 7 linear layers to int8" in err  # q, k, v, o, the MLP's two, the head
        # The command's text is the quantized model's, made here the same way.
        model = quantize_int8(GPT2LMHeadModel.from_pretrained(gpt2_run).eval())
        with torch.no_grad():
            tokens = model.to(getattr(torch, dtype)).generate(**prompt, **greedy)
        assert generated == tokenizer.decode(tokens[0], skip_special_tokens=True) + "\n"
        assert float((tokens[:, new] == full[:, new]).float().mean()) >= 0.8

    final = json.loads((gpt2_run / "run.json").read_text())["summary"]["final_eval_loss"]
    for dtype in ("float32", "bfloat16"):
        code, out, err = scratchformers(
            capsys, "eval", gpt2_run, "--json", "--quantize", "int8", "--dtype", dtype
        )
        assert code == 0, err
        assert json.loads(out)["eval_loss"] == pytest.approx(final, rel=1e-3)


def test_export_of_a_model_that_mirrors_nothing_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from scratchformers.basicformer import BasicFormerConfig, BasicFormerForCausalLM
    from scratchformers.training import TrainingSettings

    folder = tmp_path / "basicformer"
    config = BasicFormerConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2
    )
    BasicFormerForCausalLM(config).save_pretrained(folder)
    run = TrainingSettings(recipe="basicformer", preset="tiny", output_dir=folder)
    (folder / "run.json").write_text(json.dumps(run.to_dict()))

    out = tmp_path / "exported"
    code, _, err = scratchformers(capsys, "export", folder, out)
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        "error: the basicformer recipe's models mirror no transformers class, so there is "
        "nothing to export them to; load the folder itself with from_pretrained"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["basicformer"]  # nothing left


# The Hub, offline: the network calls of huggingface_hub's HfApi are replaced by recorders of
# what would have been uploaded; everything before them (transformers' push_to_hub, the card
# it looks for in the repository, offline here, and its commit operations) is the real code.
RUN_FILES = [
    "README.md",
    "config.json",
    "generation_config.json",
    "loss_curve.png",
    "metrics.jsonl",
    "model.safetensors",
    "run.json",
    "tokenizer.json",
    "tokenizer_config.json",
]


class Upload:
    """What reached the Hub boundary: the repositories made, the branches, and each commit's
    files by their path in the repository (with their bytes)."""

    def __init__(self) -> None:
        self.repos: list[tuple[str, dict[str, object]]] = []
        self.branches: list[str] = []
        self.commits: list[dict[str, object]] = []

    def files(self) -> dict[str, bytes]:
        (commit,) = self.commits
        return commit["files"]  # type: ignore[return-value]

    def card(self) -> str:
        return self.files()["README.md"].decode()


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Upload:
    from huggingface_hub import CommitInfo, HfApi
    from huggingface_hub.hf_api import RepoUrl

    upload = Upload()

    def create_repo(self: HfApi, repo_id: str, **options: object) -> RepoUrl:
        upload.repos.append((repo_id, options))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_branch(self: HfApi, repo_id: str, *, branch: str, **options: object) -> None:
        upload.branches.append(branch)

    def create_commit(self: HfApi, repo_id: str, operations: list, **options: object) -> object:
        files = {}
        for operation in operations:
            content = operation.path_or_fileobj
            files[operation.path_in_repo] = (
                Path(content).read_bytes() if isinstance(content, (str, Path)) else bytes(content)
            )
        upload.commits.append({"repo_id": repo_id, "files": files, **options})
        url = f"https://huggingface.co/{repo_id}/commit/0"
        return CommitInfo(commit_url=url, commit_message="", commit_description="", oid="0")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    return upload


def test_push_uploads_a_run_without_its_internals(
    gpt2_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], hub: Upload
) -> None:
    from huggingface_hub import ModelCard

    # A copy, with what a run may hold besides: a file half-written by write_json, a partial
    # checkpoint, a stray pickle.
    folder = tmp_path / "run"
    shutil.copytree(gpt2_run, folder)
    (folder / ".run.json.123-abcd.tmp").write_text("{")
    (folder / "checkpoints" / ".partial-checkpoint-0000030").mkdir(parents=True)
    (folder / "extra.pt").write_bytes(b"\x80")
    code, printed, err = scratchformers(capsys, "push", folder, "me/gpt2-tiny", "--dry-run")
    assert code == 0, err
    assert hub.repos == [] and hub.commits == []  # --dry-run: nothing reached the Hub
    assert "  model.safetensors\n" in printed and 'from_pretrained("me/gpt2-tiny")' in printed
    code, printed, err = scratchformers(
        capsys, "push", folder, "me/gpt2-tiny", "--revision", "try", "--commit-message", "hi"
    )
    assert code == 0, err
    assert hub.repos == [("me/gpt2-tiny", {"private": True, "exist_ok": True})]
    assert hub.branches == ["try"]
    assert sorted(hub.files()) == RUN_FILES
    commit = hub.commits[0]
    assert commit["commit_message"] == "hi" and commit["revision"] == "try"
    for name in RUN_FILES[1:]:
        assert hub.files()[name] == (folder / name).read_bytes(), name
    for left in ("checkpoints/", "tensorboard/", ".run.json.123-abcd.tmp", "extra.pt"):
        assert f"  {left}  (" in printed
    # The card is the run's, loading the repository where it loaded "path/to/this/folder".
    run_card = (folder / "README.md").read_text()
    assert 'from_pretrained("path/to/this/folder")' in run_card
    assert hub.card() == run_card.replace("path/to/this/folder", "me/gpt2-tiny")
    metadata = ModelCard(hub.card()).data
    assert metadata.library_name == "transformers" and metadata.tags == ["scratchformers", "gpt2"]
    assert metadata.eval_results  # the run's held-out results, as model-index

    hub.commits.clear()
    code, _, err = scratchformers(capsys, "push", folder, "me/gpt2-tiny", "--public")
    assert code == 0, err
    assert hub.repos[-1] == ("me/gpt2-tiny", {"private": False, "exist_ok": True})


def test_push_refuses_what_is_no_finished_model_folder(
    gpt2_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], hub: Upload
) -> None:
    def push(folder: Path) -> str:
        code, _, err = scratchformers(capsys, "push", folder, "me/x")
        assert code == 2
        return err.strip().splitlines()[-1]

    assert push(tmp_path / "nowhere") == f"error: {tmp_path / 'nowhere'} does not exist"
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.md").write_text("# notes\n")
    assert push(tmp_path / "notes") == (
        f"error: {tmp_path / 'notes'} is not a model folder: it holds no weights (no "
        "*.safetensors or *.onnx file)"
    )
    folder = tmp_path / "run"
    shutil.copytree(gpt2_run, folder)
    (folder / ".scratchformers-run.lock").write_text("pid 1")
    assert f"holds a run's lock file ({folder / '.scratchformers-run.lock'})" in push(folder)
    (folder / ".scratchformers-run.lock").unlink()
    (folder / "README.md").unlink()
    assert f"error: {folder} has no model card (README.md)" in push(folder)
    assert hub.repos == [] and hub.commits == []  # nothing reached the Hub


def test_an_export_has_a_card_of_its_own_and_pushes(
    gpt2_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], hub: Upload
) -> None:
    from huggingface_hub import ModelCard

    out = tmp_path / "gpt2-hf"
    code, _, err = scratchformers(capsys, "export", gpt2_run, out)
    assert code == 0, err
    card, run_card = ModelCard.load(out / "README.md"), ModelCard.load(gpt2_run / "README.md")
    assert card.data.library_name == "transformers"
    # The run's metadata holds for the same weights: task, tags, results.
    for field in ("pipeline_tag", "tags", "metrics", "eval_results", "license", "datasets"):
        assert getattr(card.data, field) == getattr(run_card.data, field), field
    assert card.text.startswith("\n# gpt2-tiny (transformers export)\n")
    assert "written by `scratchformers export --format transformers`" in card.text
    assert '\ntransformers.AutoModelForCausalLM.from_pretrained("path/to/this/folder")\n' in (
        card.text
    )
    assert '\ntransformers.pipeline("text-generation", model="path/to/this/folder")\n' in (
        card.text
    )
    assert "import scratchformers" not in card.text  # the export needs transformers alone
    assert "## The run\n" in card.text and "### Training\n" in card.text
    assert (out / "loss_curve.png").read_bytes() == (gpt2_run / "loss_curve.png").read_bytes()

    code, _, err = scratchformers(capsys, "push", out, "me/gpt2-hf")
    assert code == 0, err
    assert sorted(hub.files()) == [
        "README.md",
        "config.json",
        "generation_config.json",
        "loss_curve.png",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert 'AutoModelForCausalLM.from_pretrained("me/gpt2-hf")' in hub.card()
    assert 'pipeline("text-generation", model="me/gpt2-hf")' in hub.card()


def test_a_model_loaded_from_a_run_saves_and_pushes_its_card_and_tokenizer(
    gpt2_run: Path, tmp_path: Path, hub: Upload
) -> None:
    from huggingface_hub import ModelCard

    from scratchformers.gpt2 import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(gpt2_run)
    model.save_pretrained(tmp_path / "saved")
    run_card = (gpt2_run / "README.md").read_text()
    assert (tmp_path / "saved" / "README.md").read_text() == run_card
    tokenizer = transformers.AutoTokenizer.from_pretrained(gpt2_run)
    saved = transformers.AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert saved(PROMPT)["input_ids"] == tokenizer(PROMPT)["input_ids"]

    model.push_to_hub("me/from-python", tags=["mine"])
    assert hub.repos[0][0] == "me/from-python"
    files = hub.files()
    assert {"README.md", "model.safetensors", "config.json", "tokenizer.json"} <= set(files)
    assert files["tokenizer.json"] == (gpt2_run / "tokenizer.json").read_bytes()
    card = hub.card()
    assert "This is the model card of a 🤗 transformers model" not in card
    expected = run_card.replace("path/to/this/folder", "me/from-python")
    assert card.split("---", 2)[2] == expected.split("---", 2)[2]  # the text: the run's
    assert ModelCard(card).data.tags == ["scratchformers", "gpt2", "mine"]
