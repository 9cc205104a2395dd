"""Peak tensor memory of a piece of work, on a GPU or on the CPU (benchmarks, never the hot path).

CUDA: the caching allocator's own peak (``torch.cuda.max_memory_allocated``) above the level at
entry. CPU: PyTorch keeps no allocator statistics there, so a dispatch mode follows every tensor
that operators create: bytes are counted per storage while any tensor still points at it. Tensors
that existed before the block (weights) are not counted: the figure is what the work allocated.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class _StorageTracker(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.refs: dict[int, list] = {}          # storage pointer -> [bytes, live tensors]
        self.current = self.peak = 0

    def _release(self, key: int) -> None:
        entry = self.refs.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                continue
            storage = t.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
            if not size:
                continue
            entry = self.refs.get(key)
            if entry is None:
                entry = self.refs[key] = [size, 0]
                self.current += size
                self.peak = max(self.peak, self.current)
            entry[1] += 1
            weakref.finalize(t, self._release, key)
        return out


class PeakMemory:
    bytes: int = 0


@contextmanager
def peak_memory(device: torch.device | str):
    """``with peak_memory(device) as peak: ...``; afterwards ``peak.bytes`` is the peak the block added."""
    device = torch.device(device)
    result = PeakMemory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        try:
            yield result
        finally:
            torch.cuda.synchronize(device)
            result.bytes = torch.cuda.max_memory_allocated(device) - base
        return
    tracker = _StorageTracker()
    try:
        with tracker:
            yield result
    finally:
        result.bytes = tracker.peak
