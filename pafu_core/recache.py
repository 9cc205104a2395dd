"""Re-caching at a prompt change (LongLive's idea, on a budgeted cache).

The kept keys and values were computed under the old prompt. Re-caching computes them again under the new
one before the first chunk that lies wholly in the new prompt's segment. Precisely: every written chunk that
holds a token some layer keeps is run again, oldest first, on the latents that were written to the cache
(the clean chunk; the start frames as given), at the context timestep, at its own frame positions, under the
new prompt's cross-attention. In each layer a re-run chunk attends to the tokens that layer keeps of earlier
frames (already recomputed) and to the whole chunk, as its writing pass attended to the cache of its time;
then the slots the layer keeps of that chunk take the new keys and values. Kept sets differ per layer and
batch row and stay what they were: nothing is evicted or added, positions, scores and policy state stay.
Its cost is one pass over the chunks the budget keeps, never over the whole past.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def recache(runner, cache, written: Callable[[int, int], torch.Tensor], chunk_starts: list[int], end: int,
            context_timestep: float) -> int:
    """Recompute the K/V the cache keeps of frames [0, ``end``) under its current cross-attention;
    ``written(f0, f1)`` gives the latents written for those frames (every cache row), ``chunk_starts`` the
    chunks' first frames. Returns how many chunks ran again."""
    held = cache.held_chunks(chunk_starts)
    bounds = dict(zip(chunk_starts, chunk_starts[1:] + [end]))
    for f0 in held:
        x = written(f0, bounds[f0])
        t = torch.full((x.shape[0], x.shape[2]), context_timestep, device=x.device)
        runner.refresh_chunk(x, t, f0, cache)
    return len(held)
