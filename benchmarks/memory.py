"""Peak memory of one training step: the most bytes of tensors it held at once.

On a GPU this is the CUDA allocator's own count (``max_memory_allocated``). On the CPU PyTorch
keeps no such count, so :class:`TensorBytes` keeps one: a dispatch mode that sees every op the
step runs (forward, backward, optimizer), adds the storage of each tensor an op newly creates,
and takes it off when Python frees that storage. The first step is measured, with a fresh
optimizer, so the gradients and AdamW's two moments are counted as well as the activations.

Why not the process's resident-set peak, which these rows read until 2026-12-07: it measures
glibc's allocator as much as the model. Fresh processes of one side read vitmae at 63-68 MB and
vit at 61-64 MB, and the two sides' medians differed by up to 3 MB (ratios 0.95-0.99 for bert-mlm,
clip, encdec, lora, vit and vitmae), while the tensor peaks of the two sides were equal to within
0.01 MB in every one of those rows. Memory a model can save (a smaller activation, a buffer not
kept for the backward) shows in the tensor peak; how malloc reuses freed pages does not belong to
either side. What the count leaves out: scratch memory a kernel allocates and frees inside one op
(the same kernels run on both sides here), and the weights, which exist before the step.
"""

from __future__ import annotations

import copy
import weakref
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .measure import PRECISIONS, training_step


class TensorBytes(TorchDispatchMode):
    """Counts the bytes of the tensors that ops create while the mode is active, and their peak.

    A tensor that shares storage with one of its op's inputs (an in-place op, a view) is no new
    memory; storage that existed before the mode is never counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._counted: dict[int, int] = {}  # storage address -> bytes

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {
            leaf.untyped_storage().data_ptr()
            for leaf in tree_leaves((args, kwargs))
            if isinstance(leaf, torch.Tensor)
        }
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._count(leaf.untyped_storage(), inputs)
        return out

    def _count(self, storage: torch.UntypedStorage, inputs: set[int]) -> None:
        address, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or address in inputs or address in self._counted:
            return
        self._counted[address] = size
        self.live += size
        self.peak = max(self.peak, self.live)
        # A storage's Python object lives exactly as long as the storage itself.
        weakref.finalize(storage, self._release, address)

    def _release(self, address: int) -> None:
        self.live -= self._counted.pop(address, 0)


def training_step_peak_mb(
    model: nn.Module, inputs: dict[str, object], device: torch.device, precision: str = "fp32"
) -> float:
    """Peak memory, in MB, of the first training step (AdamW) of a copy of ``model`` on
    ``inputs``, above what was in use before it; under bf16 autocast for ``precision="bf16"``,
    as the timed training step runs."""
    trainee = copy.deepcopy(model).to(device).train()
    optimizer = torch.optim.AdamW(trainee.parameters(), lr=1e-4)
    dtype = PRECISIONS[precision]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        training_step(trainee, optimizer, inputs, dtype)
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    counter = TensorBytes()
    with counter:
        training_step(trainee, optimizer, inputs, dtype)
    return counter.peak / 2**20
