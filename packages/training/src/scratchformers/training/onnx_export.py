"""``scratchformers export MODEL_DIR OUT --format onnx``: a trained model as ONNX graphs that
onnxruntime runs, checked against PyTorch before the command returns.

A recipe says what its graphs are: each is an :class:`OnnxGraph` (a function of named input
tensors that returns named outputs, example inputs of any batch size and length, and the axes
that stay dynamic). :func:`onnx_format` turns the recipe's graphs into the ``"onnx"`` entry of
its :meth:`~scratchformers.training.Recipe.export_formats`; :func:`write_onnx` does the work:

1. each graph is exported with torch's exporter to ``<name>.onnx``, one self-contained file
   (above 1.8 GB of weights, protobuf's limit, they go to ``<name>.onnx.data`` beside it);
2. ``onnx.checker`` checks the file;
3. onnxruntime runs it on inputs of other shapes than the export's (batch 3 and 2, lengths
   11 and 5 against the export's 2 x 7, rows padded to unequal lengths), and every output must
   match PyTorch's to :data:`TOLERANCE` (max abs difference), on the positions that hold real
   tokens; a graph that does not raises :class:`OnnxMismatchError`, naming the output, the
   shape and the difference, and the command leaves nothing behind;
4. ``onnx.json`` beside the graphs lists each file's inputs and outputs (names, dtypes, axes),
   the difference measured and what else a user needs (special token ids, a temperature).

The recipe modules import this one to answer ``--help``, so torch and onnx are imported
inside the functions only. onnx, onnxruntime and onnxscript come with the training
package's ``[onnx]`` extra; without them the export stops with the line that installs them.
"""

from __future__ import annotations

import functools
import importlib
import json
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .recipe import ExportFormat

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

INSTALL_HINT = "pip install 'scratchformers-training[onnx]'"
METADATA_FILE = "onnx.json"
# The largest difference between onnxruntime's outputs and PyTorch's that the export accepts
# (float32), as the transformers parity of every package.
TOLERANCE = 1e-4
# The example the graph is exported with, then the shapes it is checked on: other batch sizes
# and lengths than the export's, so that a size fixed into the graph by mistake fails here.
# torch.export specialises a dimension of size 1, so the export's batch is 2.
EXPORT_SHAPE = (2, 7)
CHECK_SHAPES = ((3, 11), (2, 5))
# A graph above this size goes to an external data file beside it (protobuf stops at 2 GiB).
SINGLE_FILE_LIMIT = 1_800_000_000
# The onnx operator set the graphs use: the one torch's exporter writes natively (torchlib's),
# pinned so that a torch upgrade cannot raise what an onnxruntime must support unnoticed.
OPSET = 18


# Both errors are ValueErrors so that ``scratchformers export`` ends with its one line,
# ``error: ...``, and exit code 2, as for any other refusal.
class OnnxExportError(ValueError):
    """The ONNX export failed: torch's exporter, onnx.checker, or onnxruntime's outputs
    differing from PyTorch's."""


class OnnxMissingError(ImportError, ValueError):
    """onnx, onnxruntime or onnxscript is not installed (the training package's ``[onnx]``
    extra)."""


class OnnxMismatchError(OnnxExportError):
    """onnxruntime's output of an exported graph differs from PyTorch's beyond the tolerance."""


@dataclass(frozen=True)
class OnnxGraph:
    """One graph to export: ``<name>.onnx``.

    Attributes:
        name: the file's stem (``"model"``, ``"text_model"``, ``"encoder"``).
        module: the model whose parameters the graph holds (a tower of it is fine).
        forward: ``forward(**inputs) -> {output name: tensor}``, in the graph's output order.
        example: ``example(batch, length) -> {input name: tensor}``, in the graph's input
            order: inputs of that batch size and sequence length (an image graph ignores the
            length), with rows padded to unequal lengths where the graph takes a mask.
        dynamic_axes: by input name, ``{axis: name}`` for each axis that varies (``{0:
            "batch", 1: "sequence"}``); outputs get theirs from the export.
        real_positions: by output name, the 0/1 input mask whose zeros mark the output's
            positions that are padding: those are left out of the comparison (a padded
            position's output is whatever the model computes for a token no one reads).
        max_length: the longest sequence the model takes (its position table), which the
            checks' lengths respect; None for a graph without a sequence axis.
        description: one line for ``onnx.json`` and the command's output.
    """

    name: str
    module: torch.nn.Module
    forward: Callable[..., dict[str, torch.Tensor]]
    example: Callable[[int, int], dict[str, torch.Tensor]]
    dynamic_axes: Mapping[str, Mapping[int, str]]
    real_positions: Mapping[str, str] = field(default_factory=dict)
    max_length: int | None = None
    description: str = ""

    def shapes(self) -> tuple[tuple[int, int], list[tuple[int, int]]]:
        """The (batch, length) of the export's example and of each check, within
        ``max_length``; the check lengths differ from the export's."""
        limit = self.max_length or max(length for _, length in (EXPORT_SHAPE, *CHECK_SHAPES))
        export = (EXPORT_SHAPE[0], min(EXPORT_SHAPE[1], limit - 1))
        checks = [(batch, min(length, limit)) for batch, length in CHECK_SHAPES]
        return export, checks


def require_onnx() -> None:
    """Import onnx, onnxruntime and onnxscript, or raise :class:`OnnxMissingError` (an
    ``ImportError``) that says which is missing and how to install them."""
    missing = []
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise OnnxMissingError(
            f"--format onnx needs {', '.join(missing)}, which the training package's [onnx] "
            f"extra installs: {INSTALL_HINT}"
        )


def onnx_format(
    graphs: Callable[[PreTrainedModel], list[OnnxGraph]],
    info: Callable[[PreTrainedModel], dict[str, Any]] | None = None,
    help: str = "ONNX graphs for onnxruntime, checked against PyTorch, with the processor",
) -> ExportFormat:
    """The ``"onnx"`` entry of a recipe's ``export_formats``: ``graphs(model)`` gives the
    graphs to write, ``info(model)`` what else ``onnx.json`` should say (special token ids,
    say); the processor is copied beside them, so that a user can tokenize."""

    def write(model: PreTrainedModel, out_dir: Path) -> dict[str, Any]:
        require_onnx()  # before any work, with the line that installs what is missing
        return write_onnx(graphs(model), out_dir, info(model) if info else {})

    return ExportFormat(write=write, usage=onnx_usage, help=help, copies_processor=True)


def write_onnx(
    graphs: list[OnnxGraph], out_dir: Path, info: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Export, check and compare each graph into ``out_dir`` (see the module docstring) and
    write ``onnx.json``; returns what ``onnx.json`` holds. Raises :class:`OnnxExportError`
    (or :class:`OnnxMismatchError`) when a graph fails a check."""
    require_onnx()
    import torch

    out_dir = Path(out_dir)
    described = {}
    for graph in graphs:
        parameter = next(graph.module.parameters())
        if parameter.dtype != torch.float32:
            raise OnnxExportError(
                f"the ONNX export writes float32 graphs, compared to PyTorch to {TOLERANCE:g}; "
                f"this model's weights are {parameter.dtype}: load it with dtype=torch.float32"
            )
        path = out_dir / f"{graph.name}.onnx"
        export_graph(graph, path)
        described[graph.name] = {
            "file": path.name,
            "description": graph.description,
            **_signature(path),
            "max_abs_difference": check_graph(graph, path),
            "tolerance": TOLERANCE,
            "checked_shapes": [list(shape) for shape in graph.shapes()[1]],
        }
    metadata = {
        "format": "onnx",
        "opset": OPSET,
        "torch": torch.__version__,
        "graphs": described,
        **(info or {}),
    }
    (out_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return metadata


def export_graph(graph: OnnxGraph, path: Path) -> None:
    """Write ``graph`` to ``path`` with torch's exporter and check it with onnx.checker.

    The exporter is torch.export's (``dynamo=True``), not the TorchScript tracer: the models
    skip their data-dependent shortcuts and input checks while torch compiles them
    (``torch.compiler.is_compiling()``, true under torch.export), so the graph keeps the
    general path. The tracer would instead freeze whichever branch the example took (the
    attention mask dropped for an example without padding, say) and give a graph that is
    wrong for other inputs; it also drops the dynamic axes that torch.export proves.
    """
    import onnx
    import torch

    (batch, length), _ = graph.shapes()
    example = graph.example(batch, length)
    wrapper = _graph_module_class()(graph, list(example)).eval()
    # One entry, a tuple of the inputs' axes: the wrapper's forward takes them as *tensors.
    dynamic_shapes = (tuple(dict(graph.dynamic_axes.get(name, {})) for name in example),)
    weight_bytes = sum(p.numel() * p.element_size() for p in graph.module.parameters())
    with torch.no_grad(), warnings.catch_warnings():
        # Two axes the export proves equal (input_ids' and attention_mask's batch) get one
        # name; the exporter warns about the name it drops, which says nothing to a user.
        warnings.filterwarnings("ignore", message=".*The axis name.*will not be used")
        try:
            torch.onnx.export(
                wrapper,
                tuple(example.values()),
                str(path),
                input_names=list(example),
                output_names=list(graph.forward(**example)),
                dynamic_shapes=dynamic_shapes,
                opset_version=OPSET,
                dynamo=True,
                external_data=weight_bytes > SINGLE_FILE_LIMIT,
                verbose=False,
            )
        except Exception as error:
            # torch's message is pages long; its first line says what failed, and the
            # chained exception keeps the rest.
            reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise OnnxExportError(
                f"{path.name}: torch's ONNX exporter could not export the {graph.name} graph "
                f"({type(error).__name__}: {reason})"
            ) from error
    try:
        # By path, so that a graph with external data is checked whole.
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as error:
        raise OnnxExportError(
            f"{path.name}: onnx.checker refuses the exported graph: {error}"
        ) from error


def check_graph(graph: OnnxGraph, path: Path) -> dict[str, float]:
    """Run ``path`` in onnxruntime on the graph's example inputs of every checked shape and
    compare each output to PyTorch's; returns each output's largest difference over the
    shapes. Raises :class:`OnnxMismatchError` beyond :data:`TOLERANCE`, and when either side
    gives a value that is not finite."""
    import numpy as np
    import onnxruntime
    import torch

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    largest: dict[str, float] = {}
    for batch, length in graph.shapes()[1]:
        inputs = graph.example(batch, length)
        with torch.no_grad():
            expected = {name: t.float().numpy() for name, t in graph.forward(**inputs).items()}
        feed = {name: tensor.numpy() for name, tensor in inputs.items()}
        actual = dict(zip(expected, session.run(list(expected), feed), strict=True))
        for name, reference in expected.items():
            mask = graph.real_positions.get(name)
            keep = np.ones(reference.shape, dtype=bool)
            if mask is not None:
                real = feed[mask].astype(bool)
                keep = np.broadcast_to(
                    real.reshape(real.shape + (1,) * (reference.ndim - 2)), reference.shape
                )
            where = f"{path.name}: output {name} on inputs of batch {batch}, length {length}"
            if actual[name].shape != reference.shape:
                raise OnnxMismatchError(
                    f"{where} has shape {actual[name].shape} in onnxruntime but "
                    f"{reference.shape} in PyTorch"
                )
            ours, theirs = reference[keep], actual[name][keep]
            if not (np.isfinite(ours).all() and np.isfinite(theirs).all()):
                raise OnnxMismatchError(f"{where} holds values that are not finite")
            difference = float(np.abs(ours - theirs).max()) if ours.size else 0.0
            if difference > TOLERANCE:
                raise OnnxMismatchError(
                    f"{where} differs from PyTorch's by {difference:.2e} (tolerance "
                    f"{TOLERANCE:g}): the graph does not compute what the model does"
                )
            largest[name] = max(largest.get(name, 0.0), difference)
    return largest


def onnx_usage(out: Path) -> list[str]:
    """How to run a folder written by :func:`write_onnx`: each graph's file, inputs and
    outputs (from its ``onnx.json``), and onnxruntime's call."""
    metadata = json.loads((out / METADATA_FILE).read_text())
    lines = [f"exported to {out} as ONNX ({METADATA_FILE} describes the graphs):"]
    for graph in metadata["graphs"].values():
        inputs, outputs = _names(graph["inputs"]), _names(graph["outputs"])
        difference = max(graph["max_abs_difference"].values(), default=0.0)
        lines.append(
            f"  {graph['file']}: {inputs} -> {outputs} (onnxruntime matches PyTorch to "
            f"{difference:.1e})"
        )
    first = next(iter(metadata["graphs"].values()))["file"]
    lines.append(f'run it with onnxruntime.InferenceSession("{out / first}")')
    return lines


def _names(names: list[str]) -> str:
    """Names for a line of text, one per layer said once: ``past_key_values.<layer>.key``."""
    return ", ".join(dict.fromkeys(re.sub(r"\.\d+\.", ".<layer>.", name) for name in names))


def token_example(
    vocab_size: int,
    batch: int,
    length: int,
    *,
    padding: str = "right",
    pad_token_id: int | None = 0,
    end_token_id: int | None = None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` of ``batch`` rows of unequal lengths (the first
    row full, the others shorter), padded on the ``"right"`` (as tokenizers pad an encoder's
    input) or the ``"left"`` (a decoder's prompts); ``end_token_id`` ends each row's real
    tokens (CLIP reads a text at its end token). Seeded: the same call gives the same ids."""
    import torch

    generator = torch.Generator().manual_seed(seed + 1000 * batch + length)
    input_ids = torch.randint(0, vocab_size, (batch, length), generator=generator)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(1, batch):
        real = max(1, length - 2 * row - 1)  # unequal lengths, each row at least one token
        if padding == "left":
            attention_mask[row, : length - real] = 0
        else:
            attention_mask[row, real:] = 0
    if end_token_id is not None:
        ends = attention_mask.sum(1) - 1 if padding == "right" else torch.full((batch,), length - 1)
        input_ids[torch.arange(batch), ends] = end_token_id
    if pad_token_id is not None:
        input_ids = input_ids.masked_fill(attention_mask == 0, pad_token_id)
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def image_example(
    batch: int, channels: int, size: int | tuple[int, int], *, seed: int = 0
) -> dict[str, torch.Tensor]:
    """``pixel_values`` ``(batch, channels, height, width)``, normalised-looking noise."""
    import torch

    height, width = (size, size) if isinstance(size, int) else size
    generator = torch.Generator().manual_seed(seed + batch)
    return {"pixel_values": torch.randn(batch, channels, height, width, generator=generator)}


def _signature(path: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """The graph's inputs and outputs as onnxruntime sees them: dtype and shape, with each
    dynamic axis by name."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def describe(arguments: list[Any]) -> dict[str, dict[str, Any]]:
        return {
            argument.name: {
                "dtype": argument.type.removeprefix("tensor(").removesuffix(")"),
                "shape": list(argument.shape),
            }
            for argument in arguments
        }

    return {"inputs": describe(session.get_inputs()), "outputs": describe(session.get_outputs())}


@functools.cache
def _graph_module_class() -> type:
    # Made on first use: a module-level nn.Module subclass would import torch with this
    # module, which the recipes' --help must not.
    import torch

    class GraphModule(torch.nn.Module):
        """The graph as torch's exporter takes it: positional tensors in, a tuple out."""

        def __init__(self, graph: OnnxGraph, input_names: list[str]) -> None:
            super().__init__()
            self.model = graph.module  # registered, so its weights are the graph's parameters
            self.graph_forward = graph.forward
            self.input_names = input_names

        def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
            outputs = self.graph_forward(**dict(zip(self.input_names, tensors, strict=True)))
            return tuple(outputs.values())

    return GraphModule
