"""Every `scratchformers train ...` command the READMEs show parses with its recipe's flags: a
README that advertises a flag the recipe does not have (or spells a fixed name differently)
fails here rather than in a user's terminal."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from scratchformers.training.recipe import load_recipe
from scratchformers.training.settings import parse_settings

ROOT = Path(__file__).parents[1]
READMES = [ROOT / "README.md", *sorted(ROOT.glob("packages/*/README.md"))]
# A command inside a bash block, with its backslash-continued lines joined.
COMMAND = re.compile(r"(?:uv run )?scratchformers train ([a-z][\w-]*)((?:[^\n]*\\\n)*[^\n]*)")


def readme_commands() -> list[tuple[str, str, list[str]]]:
    commands = []
    for readme in READMES:
        for block in re.findall(r"```(?:bash|sh)\n(.*?)```", readme.read_text(), flags=re.DOTALL):
            for recipe, rest in COMMAND.findall(block):
                rest = rest.replace("\\\n", " ").split("#", 1)[0]
                argv = shlex.split(rest)
                if "--help" not in argv:
                    commands.append((str(readme.relative_to(ROOT)), recipe, argv))
    return commands


COMMANDS = readme_commands()


def test_the_readmes_show_fine_tuning_for_every_recipe() -> None:
    fine_tuned = {
        recipe for _, recipe, argv in COMMANDS if "--init-from" in argv or "--base" in argv
    }
    assert fine_tuned >= {
        "basicformer",
        "gpt2",
        "bert-mlm",
        "vit",
        "vitmae",
        "clip",
        "encdec",
        "lora",
    }


@pytest.mark.parametrize(
    ("readme", "recipe", "argv"), COMMANDS, ids=[f"{r}:{n}" for r, n, _ in COMMANDS]
)
def test_a_readme_command_parses(readme: str, recipe: str, argv: list[str]) -> None:
    settings = parse_settings(
        load_recipe(recipe), argv, prog=f"{readme}: scratchformers train {recipe}"
    )
    assert settings.recipe == recipe
