"""What a policy sees of the cache: a read-only window on positions, the budget and its own state channels."""

from __future__ import annotations

import torch


class CacheView:
    """What a policy may read when it enters or scores tokens: the budget, the shape, positions, the entering
    range and its own state channels (its memory: writes persist); never the cache itself.

    Shapes: N = ``end`` live tokens (the entering ones last, from ``start``); [layers, B, N] per token."""

    def __init__(self, cache, start: int, end: int):
        """``cache``: the ``KVCache`` that builds this view of itself (tokens [start, end) live, the entering ones
        from ``start``)."""
        self._cache, self.start, self.end = cache, start, end

    @property
    def num_entering(self) -> int:
        return self.end - self.start

    @property
    def tokens_per_frame(self) -> int:
        return self._cache.tokens_per_frame

    @property
    def budget_tokens(self) -> int:
        return self._cache.budget_tokens

    @property
    def device(self) -> torch.device:
        return self._cache.device

    @property
    def num_layers(self) -> int:
        return self._cache.num_layers

    @property
    def batch(self) -> int:
        return self._cache.batch

    @property
    def token_index(self) -> torch.Tensor:
        """[layers, B, N] int32 position of every live token in the video (frame * tokens_per_frame + place)."""
        return self._cache.token_index[:, :, :self.end]

    @property
    def frame_index(self) -> torch.Tensor:
        """[layers, B, N] latent frame of every live token (the entering ones last)."""
        return self.token_index // self.tokens_per_frame

    @property
    def place(self) -> torch.Tensor:
        """[layers, B, N] position of every live token within its frame (row-major patch index)."""
        return self.token_index % self.tokens_per_frame

    @property
    def entering_frame_index(self) -> torch.Tensor:
        return self._cache.token_index[:, :, self.start:self.end] // self.tokens_per_frame

    @property
    def newest_frame(self) -> int:
        return self._cache.frame_start + self.num_entering // self.tokens_per_frame - 1

    def state(self, name: str) -> torch.Tensor:
        """[layers, B, N] the policy's own per-token channel ``name`` (a view: writes persist)."""
        return self._cache.state[:, :, :self.end, self._cache.channels.index(name)]

    def entering_state(self, name: str) -> torch.Tensor:
        return self.state(name)[:, :, self.start:]
