"""Weight files checked before they are read: what is wrong with a damaged one, in words.

A safetensors file is an 8-byte little-endian header length, a JSON header that gives each
tensor's dtype, shape and byte range in the data that follows, then the data, exactly as long
as the header says. That layout lets a file be checked without reading a tensor: a file cut
short (a full disk, an interrupted copy or download), an empty one, or one that is not
safetensors at all, is told apart here and named with its path, where safetensors itself would
only say "Error while deserializing header: incomplete metadata" or "header too large".

:func:`safetensors_problem` says what is wrong (or ``None``); :func:`check_safetensors` raises
it as an ``OSError``; :func:`check_weight_files` checks the weights that ``from_pretrained``
would read from a local folder (one file, or every shard its index lists). This module reads
files with the standard library alone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SAFE_WEIGHTS_NAME = "model.safetensors"  # transformers' names for a folder's weights
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
# safetensors refuses a header longer than this (its MAX_HEADER_SIZE): a larger length in the
# first 8 bytes means they are not a header length at all.
MAX_HEADER_BYTES = 100_000_000


def _bytes(count: int) -> str:
    return f"{count} byte{'' if count == 1 else 's'}"


def safetensors_problem(path: str | os.PathLike[str]) -> str | None:
    """What makes ``path`` unreadable as a safetensors file, in a sentence that starts with the
    path; ``None`` when its header reads and the file is as long as the header says.

    Cheap: reads the header, never the data. It finds a missing or unreadable file, an empty
    file, a file cut short (inside the header or inside the data: the message gives the size
    the header promises and the size found), one longer than its header says, one that is not
    safetensors (no header length, or no JSON header after it) and a header that is not the
    JSON safetensors writes. Damage inside the data itself shows only on load.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            prefix = file.read(8)
            header_size = int.from_bytes(prefix, "little")
            raw = file.read(min(header_size, MAX_HEADER_BYTES)) if len(prefix) == 8 else b""
    except FileNotFoundError:
        return f"{path} is missing"
    except OSError as error:
        return f"{path} cannot be read ({error.strerror or error})"
    if size == 0:
        return f"{path} is empty (0 bytes)"
    if size < 8:
        return (
            f"{path} is truncated: it has {_bytes(size)}, fewer than the 8 that give the "
            "length of a safetensors header"
        )
    # safetensors writes its header as a JSON object, padded with spaces.
    if header_size > MAX_HEADER_BYTES or (raw and not raw.startswith(b"{")):
        return (
            f"{path} is not a safetensors file (its first bytes are not a header length "
            "followed by a JSON header)"
        )
    if 8 + header_size > size:
        return (
            f"{path} is truncated: its header says the header alone ends at byte "
            f"{8 + header_size}, but the file has {_bytes(size)}"
        )
    try:
        header = json.loads(raw)
        ends = [
            int(entry["data_offsets"][1])
            for name, entry in header.items()
            if name != "__metadata__"
        ]
    except (ValueError, AttributeError, IndexError, KeyError, TypeError) as error:
        return f"{path} has an unreadable header (not the JSON safetensors writes: {error})"
    expected = 8 + header_size + max(ends, default=0)
    if expected > size:
        return (
            f"{path} is truncated: its header says the file has {_bytes(expected)}, "
            f"but it has {_bytes(size)}"
        )
    if expected < size:
        return (
            f"{path} is longer than its header says: the header says {_bytes(expected)}, "
            f"the file has {_bytes(size)}"
        )
    return None


def check_safetensors(path: str | os.PathLike[str]) -> None:
    """Raise an ``OSError`` naming ``path`` and what is wrong with it (see
    :func:`safetensors_problem`) unless it reads as a whole safetensors file."""
    problem = safetensors_problem(path)
    if problem:
        raise OSError(problem)


def check_weight_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Check the safetensors weights that ``from_pretrained`` reads from the local ``folder``,
    and return them: its ``model.safetensors``, or else every shard that its
    ``model.safetensors.index.json`` lists. Raise an ``OSError`` naming the file and what is
    wrong with it: a damaged weights file, an index that is not JSON or has no ``weight_map``,
    a shard it lists that is missing or damaged. A folder with neither file gives ``[]``
    (transformers' loader says what it looked for)."""
    folder = Path(folder)
    single = folder / SAFE_WEIGHTS_NAME
    index = folder / SAFE_WEIGHTS_INDEX_NAME
    if single.is_file():
        files = [single]
    elif index.is_file():
        files = [folder / name for name in _shard_names(index)]
        for file in files:
            if not file.is_file():
                raise OSError(f"{file} is missing (it is listed in {index})")
    else:
        return []
    for file in files:
        check_safetensors(file)
    return files


def _shard_names(index: Path) -> list[str]:
    """The shard files that a sharded checkpoint's index lists, in order."""
    try:
        weight_map = json.loads(index.read_bytes())["weight_map"]
        return list(dict.fromkeys(weight_map.values()))
    except json.JSONDecodeError as error:
        raise OSError(
            f"{index} is not valid JSON ({error.msg} at line {error.lineno} column {error.colno})"
        ) from error
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise OSError(
            f"{index} is not a sharded checkpoint's index (no weight_map of tensor names to files)"
        ) from error
