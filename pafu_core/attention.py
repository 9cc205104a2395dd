"""Attention statistics computed tile by tile over queries, never holding the full map.

A row's softmax needs the whole key row, so tiles are slices of queries with all keys; logits are
fp32 per tile. Used during the cache-writing pass by the attention-mass (H2O-style) policy and by
participative compression (the attention the newest frames' queries pay each key).
"""

from __future__ import annotations

import torch


def query_tile_size(num_keys: int, batch: int, heads: int, max_bytes: float = 256e6) -> int:
    """Largest query tile whose fp32 logits [B, H, tile, N] fit in ``max_bytes``."""
    return max(1, int(max_bytes // (4 * batch * heads * max(1, num_keys))))


def attention_with_key_mass(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            tile: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention plus the attention mass each key receives.

    q [B, S, H, D], k/v [B, N, H, D] -> (output [B, S, H*D] in q's dtype,
    mass [B, N] fp32 = sum over heads and queries of the attention probabilities).
    """
    b, s, h, d = q.shape
    n = k.shape[1]
    tile = tile or query_tile_size(n, b, h)
    kt = k.transpose(1, 2).to(torch.float32)          # [B, H, N, D]
    vt = v.transpose(1, 2).to(torch.float32)
    out = torch.empty(b, s, h, d, dtype=q.dtype, device=q.device)
    mass = torch.zeros(b, n, dtype=torch.float32, device=q.device)
    scale = d ** -0.5
    for start in range(0, s, tile):
        qt = q[:, start:start + tile].transpose(1, 2).to(torch.float32)   # [B, H, T, D]
        probs = torch.softmax((qt @ kt.transpose(-1, -2)) * scale, dim=-1)  # [B, H, T, N]
        mass += probs.sum(dim=(1, 2))
        out[:, start:start + tile] = (probs @ vt).transpose(1, 2).to(q.dtype)
    return out.flatten(2), mass


def attention_received(q: torch.Tensor, k: torch.Tensor, max_bytes: float = 256e6) -> torch.Tensor:
    """Mean attention each key receives: q [B, S, H, D] (roped), k [B, N, H, D] (every key those queries attend
    to) -> [B, N] fp32 = mean over heads and queries of softmax(q k^T / sqrt(D)) (each row over all N keys).

    At most ``D`` queries a tile, so a tile's fp32 logits are no larger than the keys in fp32; the keys are
    never copied (the product runs in their dtype, the softmax in fp32, in place): scoring adds about one
    key-sized buffer to the pass, not a query x key map."""
    b, s, h, d = q.shape
    n = k.shape[1]
    tile = min(d, query_tile_size(n, b, h, max_bytes))
    kt = k.transpose(1, 2)                            # [B, H, N, D], a view
    total = torch.zeros(b, n, dtype=torch.float32, device=q.device)
    scale = d ** -0.5
    for start in range(0, s, tile):
        qt = q[:, start:start + tile].transpose(1, 2).to(k.dtype)         # [B, H, T, D]
        logits = (qt @ kt.transpose(-1, -2)).float().mul_(scale)          # [B, H, T, N]
        logits.sub_(logits.amax(dim=-1, keepdim=True)).exp_()
        total += logits.div_(logits.sum(dim=-1, keepdim=True)).sum(dim=(1, 2))
    return total / (h * s)
