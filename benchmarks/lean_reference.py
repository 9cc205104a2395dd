"""The physical reference for chunk time: a lean Wan 2.1 forward with nothing but the math.

The full stack of Wan blocks with the model's shapes, dtype and weights: linear layers, RMS/layer
norms, RoPE as elementwise work on precomputed tables, SDPA over one contiguous pre-filled K/V
buffer of the same size as the cache, cross-attention over precomputed text K/V, the FFN and the
modulation. No policy, no metadata, no staging beyond writing the chunk's K/V into the buffer's tail.
A chunk = ``passes`` such forwards (4 denoising passes + the cache-writing pass).

Written independently of ``pafu_core.adapter`` on purpose: it is what the engine is measured against.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F


def _rope_tables(head_dim: int, tokens: int, device, dtype):
    """cos / sin duplicated per pair, [tokens, 1, head_dim]: RoPE becomes x*cos + swap(x)*sin."""
    angles = torch.rand(tokens, head_dim // 2, device=device, dtype=torch.float32) * 6.28
    return (torch.cos(angles).repeat_interleave(2, -1)[:, None].to(dtype),
            torch.sin(angles).repeat_interleave(2, -1)[:, None].to(dtype))


def _rope(x, cos, sin):
    swapped = torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)
    return torch.addcmul(x * cos, swapped, sin)


class LeanForward:
    def __init__(self, model, batch: int, chunk_tokens: int, cache_tokens: int, text_tokens: int, device, dtype):
        self.m, self.dtype, self.device = model, dtype, torch.device(device)
        self.dim, self.heads = model.dim, model.num_heads
        self.head_dim = self.dim // self.heads
        self.batch, self.chunk, self.cache_tokens = batch, chunk_tokens, cache_tokens
        layers = len(model.blocks)
        total = cache_tokens + chunk_tokens
        # one contiguous pre-filled buffer per layer: cached tokens, then the chunk's slots
        self.kv = torch.randn(layers, 2, batch, total, self.heads, self.head_dim, device=device, dtype=dtype)
        self.cos, self.sin = _rope_tables(self.head_dim, chunk_tokens, device, dtype)
        text = torch.randn(batch, text_tokens, self.dim, device=device, dtype=dtype)
        self.cross = [(F.linear(text, b.cross_attn.k.weight, b.cross_attn.k.bias).view(batch, -1, self.heads, self.head_dim),
                       F.linear(text, b.cross_attn.v.weight, b.cross_attn.v.bias).view(batch, -1, self.heads, self.head_dim))
                      for b in model.blocks]
        self.e0 = torch.randn(batch, 1, 6, self.dim, device=device, dtype=dtype) * 0.1

    def forward(self) -> torch.Tensor:
        b, s, n, d = self.batch, self.chunk, self.heads, self.head_dim
        x = torch.randn(b, s, self.dim, device=self.device, dtype=self.dtype)
        end = self.cache_tokens + s
        for i, blk in enumerate(self.m.blocks):
            e = (blk.modulation.to(self.dtype).unsqueeze(0) + self.e0).unbind(2)          # [B, 1, C] each
            h = torch.addcmul(e[0], F.layer_norm(x, (self.dim,), eps=1e-6), 1 + e[1])
            sa = blk.self_attn
            q = F.rms_norm(F.linear(h, sa.q.weight, sa.q.bias), (self.dim,), sa.norm_q.weight, 1e-6).view(b, s, n, d)
            k = F.rms_norm(F.linear(h, sa.k.weight, sa.k.bias), (self.dim,), sa.norm_k.weight, 1e-6).view(b, s, n, d)
            v = F.linear(h, sa.v.weight, sa.v.bias).view(b, s, n, d)
            q, k = _rope(q, self.cos, self.sin), _rope(k, self.cos, self.sin)
            self.kv[i, 0, :, self.cache_tokens:end] = k
            self.kv[i, 1, :, self.cache_tokens:end] = v
            att = F.scaled_dot_product_attention(q.transpose(1, 2), self.kv[i, 0].transpose(1, 2),
                                                 self.kv[i, 1].transpose(1, 2))
            x = torch.addcmul(x, F.linear(att.transpose(1, 2).reshape(b, s, self.dim), sa.o.weight, sa.o.bias), e[2])
            ca = blk.cross_attn
            cq = F.rms_norm(F.linear(F.layer_norm(x, (self.dim,), blk.norm3.weight, blk.norm3.bias, 1e-6),
                                     ca.q.weight, ca.q.bias), (self.dim,), ca.norm_q.weight, 1e-6).view(b, s, n, d)
            ck, cv = self.cross[i]
            catt = F.scaled_dot_product_attention(cq.transpose(1, 2), ck.transpose(1, 2), cv.transpose(1, 2))
            x = x + F.linear(catt.transpose(1, 2).reshape(b, s, self.dim), ca.o.weight, ca.o.bias)
            y = F.linear(F.gelu(F.linear(torch.addcmul(e[3], F.layer_norm(x, (self.dim,), eps=1e-6), 1 + e[4]),
                                         blk.ffn[0].weight, blk.ffn[0].bias), approximate="tanh"),
                         blk.ffn[2].weight, blk.ffn[2].bias)
            x = torch.addcmul(x, y, e[5])
        return x

    def chunk_ms(self, passes: int = 5, repeats: int = 3) -> float:
        """Median time of one chunk (``passes`` forwards), in ms."""
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        with torch.inference_mode():
            self.forward()                        # warm-up
            times = []
            for _ in range(repeats):
                sync()
                t0 = time.perf_counter()
                for _ in range(passes):
                    self.forward()
                sync()
                times.append((time.perf_counter() - t0) * 1e3)
        return sorted(times)[len(times) // 2]
