"""bert-mlm's README on sentence-transformers, run as written: its two snippets are read from
the README itself, so the documentation and this test cannot drift apart.

The folders the snippets name are made here, small: ``outputs/bert-mlm-tiny`` as a run leaves
it (our BertForMaskedLM, a WordPiece tokenizer, run.json) and ``bert-hf`` written from it by
``scratchformers export``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from scratchformers.training.cli import main

README = Path(__file__).parents[1] / "packages/bert-mlm/README.md"
SECTION = "## Sentence embeddings (sentence-transformers)"
WORDS = ["a", "list", "is", "mutable", "sequence", "tuples", "cannot", "change", "the", "of"]


def readme_snippets() -> list[str]:
    """The Python blocks of the README's sentence-transformers section, in order."""
    text = README.read_text()
    assert SECTION in text, f"{README} lost its section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def make_run_folder(folder: Path) -> None:
    """A small bert-mlm model with its WordPiece tokenizer and run.json, as a run leaves it."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    from scratchformers.bert_mlm import BertConfig, BertForMaskedLM
    from scratchformers.training import TrainingSettings

    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    wordpiece = Tokenizer(
        models.WordPiece({word: index for index, word in enumerate(vocabulary)}, unk_token="[UNK]")
    )
    wordpiece.normalizer = normalizers.BertNormalizer()
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    tokenizer = transformers.BertTokenizerFast(
        tokenizer_object=wordpiece,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    config = BertConfig(
        vocab_size=len(vocabulary),
        hidden_size=24,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=40,
        max_position_embeddings=32,
    )
    BertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    run = TrainingSettings(recipe="bert-mlm", preset="tiny", output_dir=folder)
    (folder / "run.json").write_text(json.dumps(run.to_dict()))


def test_the_readme_snippets_run_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_this_process, in_a_new_process = readme_snippets()
    # A new process, for what the README says of one: the export loads with no scratchformers
    # module; the saved sentence-transformers folder of our model fails without the import
    # (the error the README quotes) and loads with the README's snippet. It starts now and
    # imports sentence-transformers (the slow part) while this process runs the first
    # snippet, then waits for the folder that snippet saves.
    without_import = "\n".join(
        line for line in in_a_new_process.splitlines() if "import scratchformers" not in line
    )
    script = f"""
import json, sys
from sentence_transformers import SentenceTransformer
sentences = json.loads(sys.stdin.readline())
exported = SentenceTransformer("bert-hf").encode(sentences).tolist()
loaded_scratchformers = any(name.startswith("scratchformers") for name in sys.modules)
try:
{_indented(without_import)}
    failure = None
except ValueError as error:
    failure = str(error)
{in_a_new_process}
print(json.dumps({{"exported": exported, "failure": failure,
    "loaded_scratchformers": loaded_scratchformers,
    "ours": model.encode(sentences).tolist()}}))
"""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    new_process = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=environment,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        monkeypatch.chdir(tmp_path)
        make_run_folder(tmp_path / "outputs" / "bert-mlm-tiny")
        assert main(["export", "outputs/bert-mlm-tiny", "bert-hf"]) == 0

        namespace: dict[str, object] = {}
        exec(compile(in_this_process, str(README), "exec"), namespace)
        ours, exported = namespace["ours"], namespace["exported"]
        assert type(ours[0].auto_model).__module__ == "scratchformers.bert_mlm.modeling"
        assert type(exported[0].auto_model) is transformers.BertModel
        embeddings = namespace["embeddings"]
        assert isinstance(embeddings, torch.Tensor) and embeddings.shape == (2, 24)
        assert float(embeddings.std()) > 1e-2  # varied numbers, not a constant
        assert (tmp_path / "bert-sentences" / "modules.json").is_file()
        stdout, stderr = new_process.communicate(
            json.dumps(namespace["sentences"]) + "\n", timeout=300
        )
    finally:
        if new_process.poll() is None:
            new_process.kill()
            new_process.wait()
    assert new_process.returncode == 0, stderr[-3000:]
    report = json.loads(stdout.strip().splitlines()[-1])
    assert not report["loaded_scratchformers"]
    assert report["failure"] is not None
    assert "model type `scratchformers-bert-mlm`" in report["failure"]
    assert "does not recognize this architecture" in report["failure"]
    for name in ("exported", "ours"):
        fresh = torch.tensor(report[name])
        assert float((fresh - embeddings).abs().max()) <= 1e-5, name


def _indented(code: str) -> str:
    return "\n".join("    " + line for line in code.splitlines())
