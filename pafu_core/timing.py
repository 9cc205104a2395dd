"""Wall-clock timing that does not stall the GPU: CUDA events are read once, when the chunk ends."""

from __future__ import annotations

import time

import torch


class DeviceTimer:
    """Accumulates the time between ``start()`` and ``stop()`` calls on one device."""

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"
        self._pairs: list = []
        self._host_ms = 0.0
        self._t0 = 0.0

    def start(self) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self._pairs.append([ev, None])
        else:
            self._t0 = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self._pairs[-1][1] = ev
        else:
            self._host_ms += (time.perf_counter() - self._t0) * 1e3

    def take_ms(self) -> float:
        """Total milliseconds since the last ``take_ms`` (synchronises on CUDA), then reset."""
        if self.cuda:
            if self._pairs:
                self._pairs[-1][1].synchronize()
            total = sum(a.elapsed_time(b) for a, b in self._pairs)
            self._pairs = []
            return total
        total, self._host_ms = self._host_ms, 0.0
        return total


def synchronize(device: torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
