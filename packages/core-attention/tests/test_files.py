"""The weight-file checks: each kind of damage is told apart, in a message that starts with the
file's path, and every file they refuse is one that safetensors refuses too."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from scratchformers.core_attention import (
    check_safetensors,
    check_weight_files,
    safetensors_problem,
)

TENSORS = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4)}


def write(path: Path) -> Path:
    save_file(TENSORS, path, metadata={"format": "pt"})
    return path


def header_end(data: bytes) -> int:
    """Where a safetensors file's data starts: 8 bytes of length, then the header."""
    return 8 + int.from_bytes(data[:8], "little")


def with_header(header: bytes) -> bytes:
    return len(header).to_bytes(8, "little") + header


# damage -> (the file's new bytes from its old ones, the message after the path)
DAMAGE: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], str]]] = {
    "empty": (lambda data: b"", lambda data: "is empty (0 bytes)"),
    "length cut": (
        lambda data: data[:5],
        lambda data: "is truncated: it has 5 bytes, fewer than the 8 that give the length",
    ),
    "header cut": (
        lambda data: data[:20],
        lambda data: (
            f"is truncated: its header says the header alone ends at byte {header_end(data)}, "
            "but the file has 20 bytes"
        ),
    ),
    "data cut": (
        lambda data: data[:-3],
        lambda data: (
            f"is truncated: its header says the file has {len(data)} bytes, "
            f"but it has {len(data) - 3} bytes"
        ),
    ),
    "bytes appended": (
        lambda data: data + b"\0\0",
        lambda data: (
            f"is longer than its header says: the header says {len(data)} bytes, "
            f"the file has {len(data) + 2} bytes"
        ),
    ),
    "text": (
        lambda data: b"this is a README, not weights\n",
        lambda data: "is not a safetensors file",
    ),
    "small length, no JSON": (
        lambda data: with_header(b"[1, 2]"),
        lambda data: "is not a safetensors file",
    ),
    "header not JSON": (
        lambda data: with_header(b"{oops"),
        lambda data: "has an unreadable header (not the JSON safetensors writes",
    ),
    "tensor without offsets": (
        lambda data: with_header(json.dumps({"a": {"dtype": "F32", "shape": [1]}}).encode()),
        lambda data: "has an unreadable header",
    ),
}


def test_a_whole_file_passes(tmp_path: Path) -> None:
    file = write(tmp_path / "model.safetensors")
    assert safetensors_problem(file) is None
    check_safetensors(file)
    assert check_weight_files(tmp_path) == [file]


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_each_damage_is_named_with_the_file(
    tmp_path: Path, damage: tuple[Callable[[bytes], bytes], Callable[[bytes], str]]
) -> None:
    spoil, fault = damage
    file = write(tmp_path / "model.safetensors")
    data = file.read_bytes()
    file.write_bytes(spoil(data))
    expected = f"{file} {fault(data)}"
    assert safetensors_problem(file).startswith(expected)
    with pytest.raises(OSError) as raised:
        check_safetensors(file)
    assert str(raised.value).startswith(expected)
    with pytest.raises(
        OSError, match=r"^.* (is not a safetensors|is truncated|is empty|is longer|has an)"
    ):
        check_weight_files(tmp_path)
    with pytest.raises(SafetensorError):  # the check refuses only what safetensors refuses
        load_file(file)


def test_a_missing_or_unreadable_file_is_named(tmp_path: Path) -> None:
    assert safetensors_problem(tmp_path / "gone.safetensors") == (
        f"{tmp_path / 'gone.safetensors'} is missing"
    )
    assert safetensors_problem(tmp_path).startswith(f"{tmp_path} cannot be read")


def sharded(folder: Path) -> list[Path]:
    """``folder`` as a sharded checkpoint of two files and an index; returns the shards."""
    folder.mkdir()
    shards = [folder / f"model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    save_file({"a": TENSORS["a"]}, shards[0], metadata={"format": "pt"})
    save_file({"b": TENSORS["b"]}, shards[1], metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {"a": shards[0].name, "b": shards[1].name}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return shards


def test_every_shard_the_index_lists_is_checked(tmp_path: Path) -> None:
    shards = sharded(tmp_path / "sharded")
    assert check_weight_files(tmp_path / "sharded") == shards
    shards[1].write_bytes(shards[1].read_bytes()[:-1])
    with pytest.raises(
        OSError, match=rf"^{re.escape(str(shards[1]))} is truncated: its header says"
    ):
        check_weight_files(tmp_path / "sharded")
    shards[1].unlink()
    index = tmp_path / "sharded" / "model.safetensors.index.json"
    with pytest.raises(
        OSError, match=re.escape(f"{shards[1]} is missing (it is listed in {index})")
    ):
        check_weight_files(tmp_path / "sharded")


def test_an_index_that_is_not_one_is_named(tmp_path: Path) -> None:
    sharded(tmp_path / "sharded")
    index = tmp_path / "sharded" / "model.safetensors.index.json"
    index.write_text('{"weight_map": {"a": ')
    with pytest.raises(
        OSError, match=rf"^{re.escape(str(index))} is not valid JSON \(.* at line 1 column \d+\)"
    ):
        check_weight_files(tmp_path / "sharded")
    index.write_text('{"metadata": {}}')
    with pytest.raises(
        OSError, match=rf"^{re.escape(str(index))} is not a sharded checkpoint's index"
    ):
        check_weight_files(tmp_path / "sharded")


def test_a_folder_without_weights_is_left_to_the_loader(tmp_path: Path) -> None:
    assert check_weight_files(tmp_path) == []
