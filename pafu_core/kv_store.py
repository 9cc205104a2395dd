"""Where the cached keys and values live: preallocated slots, in the model's dtype or in 8 bits.

A store knows slots, not tokens: ``KVCache`` decides which token sits in which slot and when one is freed.
Layout: ``kv`` [layers, 2 (K/V), batch, capacity, heads, head_dim]. The committed tokens of a layer sit in
slots ``[0, n)`` and the chunk being generated is staged at ``[n, n + s)``, so attention always reads a
contiguous prefix (ComfyUI's native ``kv_caches`` convention: ``k[:, :end]``).

``Int8KVStore`` keeps one fp16 scale per token and head; each layer is dequantised on its own into one
reusable buffer when it is read (peak memory falls with the cache: no full-precision copy of the cache ever
exists), and the chunk being generated stays in full precision until it is committed.
"""

from __future__ import annotations

import torch

from .ops import rotate_pairs

#: storage kinds a user may choose (the budget node's ``kv_storage``)
KV_STORAGE = ("model", "int8")


class KVStore:
    """K/V slots in the model's dtype."""

    storage = "model"

    def __init__(self, num_layers: int, batch: int, capacity: int, num_heads: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype):
        self.num_layers, self.batch, self.capacity = num_layers, batch, capacity
        self.num_heads, self.head_dim, self.device, self.dtype = num_heads, head_dim, device, dtype
        self.kv = torch.zeros(num_layers, 2, batch, capacity, num_heads, head_dim, device=device,
                              dtype=self.slot_dtype)

    @property
    def slot_dtype(self) -> torch.dtype:
        return self.dtype

    @classmethod
    def extra_bytes(cls, capacity: int, batch: int, num_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        """Bytes beyond the slots themselves (a read buffer), for the memory check before allocation."""
        return 0

    # ---- the chunk forward -----------------------------------------------------------------
    def stage(self, layer: int, n: int, k: torch.Tensor, v: torch.Tensor,
              commit: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one layer's chunk K/V [B, s, H, D] at slots [n, n + s); returns keys and values [B, n + s, H, D]
        that its queries attend to (``commit``: the cache-writing pass, the chunk becomes part of the store)."""
        end = n + k.shape[1]
        self.kv[layer, 0, :, n:end] = k
        self.kv[layer, 1, :, n:end] = v
        return self.kv[layer, 0, :, :end], self.kv[layer, 1, :, :end]

    def rotate_keys(self, layer: int, n: int, cos: torch.Tensor, sin: torch.Tensor, moved: torch.Tensor) -> None:
        """Rotate the first ``cos.shape[-1]`` pairs of each key in slots [0, n) of one layer by per-slot angles
        (cos / sin [B, n, pairs], fp32; ``moved`` [B, n] bool: the slots whose angle is not zero): the temporal
        band of RoPE moved to a new phase, in place. A zero angle leaves a key's bits as they are."""
        band = self.kv[layer, 0, :, :n, :, :2 * cos.shape[-1]]
        band.copy_(rotate_pairs(band.float(), cos[:, :, None], sin[:, :, None]).to(band.dtype))

    def refresh(self, layer: int, n: int, inside: torch.Tensor, src: torch.Tensor, k: torch.Tensor,
                v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Re-caching, one layer: slots [0, n) where ``inside`` [B, n] take row ``src`` [B, n, H, D] (indices) of
        the re-run chunk's K/V [B, s, H, D]; returns the held keys and values [B, n, H, D]."""
        for i, x in enumerate((k, v)):
            slots = self.kv[layer, i, :, :n]
            slots.copy_(torch.where(inside[..., None, None], torch.gather(x, 1, src).to(slots.dtype), slots))
        return self.kv[layer, 0, :, :n], self.kv[layer, 1, :, :n]

    # ---- bookkeeping -------------------------------------------------------------------------
    def slot_buffers(self) -> list[tuple[torch.Tensor, int]]:
        """Every per-slot buffer as (tensor [L, 2, B, capacity, ...], width of one slot's row)."""
        return [(self.kv, self.num_heads * self.head_dim)]

    def move(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Copy slot ``src`` to slot ``dst`` [L, B, m] per (layer, batch) row, K and V, in every buffer at once."""
        rows = (torch.arange(self.num_layers, device=self.device).view(-1, 1, 1, 1) * 2
                + torch.arange(2, device=self.device).view(1, 2, 1, 1)) * self.batch \
            + torch.arange(self.batch, device=self.device).view(1, 1, -1, 1)
        rows = rows * self.capacity
        flat_src = (rows + src.unsqueeze(1)).flatten()
        flat_dst = (rows + dst.unsqueeze(1)).flatten()
        for buf, width in self.slot_buffers():
            flat = buf.view(-1, width)
            flat.index_copy_(0, flat_dst, flat.index_select(0, flat_src))

    def grow(self, capacity: int) -> None:
        """More slots; the first ``min(capacity, old)`` keep their contents."""
        self._grow_buffers(capacity)
        self.capacity = capacity

    def _grow_buffers(self, capacity: int) -> None:
        self.kv = grown(self.kv, 3, capacity)

    def tensors(self) -> list[torch.Tensor]:
        return [self.kv]

    def release(self) -> None:
        self.kv = None


class Int8KVStore(KVStore):
    """K/V slots in int8 with one fp16 scale per token and head, read through one full-precision layer buffer."""

    storage = "int8"

    def __init__(self, num_layers, batch, capacity, num_heads, head_dim, device, dtype):
        super().__init__(num_layers, batch, capacity, num_heads, head_dim, device, dtype)
        self.scale = torch.zeros(num_layers, 2, batch, capacity, num_heads, device=device, dtype=torch.float16)
        # one layer in full precision: the dequantised committed tokens + the staged chunk
        self.scratch = torch.zeros(2, batch, capacity, num_heads, head_dim, device=device, dtype=dtype)

    @property
    def slot_dtype(self) -> torch.dtype:
        return torch.int8

    @classmethod
    def extra_bytes(cls, capacity, batch, num_heads, head_dim, dtype) -> int:
        return 2 * capacity * batch * num_heads * head_dim * torch.empty((), dtype=dtype).element_size()

    def _quantize_into(self, layer: int, n: int, end: int, k: torch.Tensor, v: torch.Tensor) -> None:
        for i, x in enumerate((k, v)):
            # in fp32, then clamped to what fp16 holds: never a zero or infinite scale
            scale = x.abs().amax(dim=-1).float().div_(127.0).clamp_(6.2e-5, 65504.0).to(torch.float16)
            self.scale[layer, i, :, n:end] = scale
            self.kv[layer, i, :, n:end] = (x.float() / scale[..., None].float()).round_().clamp_(-127, 127).to(torch.int8)

    def _dequantized(self, layer: int, n: int) -> torch.Tensor:
        """[2, B, n, H, D] slots [0, n) of one layer in full precision (a fresh tensor)."""
        return self.kv[layer, :, :, :n].to(self.dtype) * self.scale[layer, :, :, :n, :, None].to(self.dtype)

    def stage(self, layer, n, k, v, commit):
        end = n + k.shape[1]
        if commit:                               # the committed chunk is stored in 8 bits
            self._quantize_into(layer, n, end, k, v)
        scratch = self.scratch
        scale = self.scale[layer, :, :, :n, :, None].to(scratch.dtype)       # small: products in the model dtype
        torch.mul(self.kv[layer, :, :, :n], scale, out=scratch[:, :, :n])
        scratch[0, :, n:end] = k
        scratch[1, :, n:end] = v
        return scratch[0, :, :end], scratch[1, :, :end]

    def rotate_keys(self, layer, n, cos, sin, moved):
        """Dequantise one layer's keys, rotate their temporal band, quantise the ``moved`` ones again (a fresh
        scale per token and head: a rotation can move a head's largest element); the others keep their bits."""
        keys = self._dequantized(layer, n)[0].float()
        pairs = 2 * cos.shape[-1]
        keys[..., :pairs] = rotate_pairs(keys[..., :pairs], cos[:, :, None], sin[:, :, None])
        scale = keys.abs().amax(dim=-1).div_(127.0).clamp_(6.2e-5, 65504.0).to(torch.float16)
        values = (keys / scale[..., None].float()).round_().clamp_(-127, 127).to(torch.int8)
        self.scale[layer, 0, :, :n] = torch.where(moved[..., None], scale, self.scale[layer, 0, :, :n])
        self.kv[layer, 0, :, :n] = torch.where(moved[..., None, None], values, self.kv[layer, 0, :, :n])

    def refresh(self, layer, n, inside, src, k, v):
        old = self.kv[layer, :, :, :n].clone(), self.scale[layer, :, :, :n].clone()
        self._quantize_into(layer, 0, n, torch.gather(k, 1, src), torch.gather(v, 1, src))
        keep = ~inside
        self.kv[layer, :, :, :n] = torch.where(keep[None, ..., None, None], old[0], self.kv[layer, :, :, :n])
        self.scale[layer, :, :, :n] = torch.where(keep[None, ..., None], old[1], self.scale[layer, :, :, :n])
        held = self.kv[layer, :, :, :n].to(k.dtype) * self.scale[layer, :, :, :n, :, None].to(k.dtype)
        return held[0], held[1]

    def slot_buffers(self):
        return [(self.kv, self.num_heads * self.head_dim), (self.scale, self.num_heads)]

    def _grow_buffers(self, capacity):
        super()._grow_buffers(capacity)
        self.scale = grown(self.scale, 3, capacity)
        self.scratch = grown(self.scratch, 2, capacity)

    def tensors(self):
        return [self.kv, self.scale, self.scratch]

    def release(self):
        self.kv = self.scale = self.scratch = None


STORES = {"model": KVStore, "int8": Int8KVStore}


def store_class(storage: str) -> type[KVStore]:
    if storage not in STORES:
        raise ValueError(f"kv storage must be one of {', '.join(KV_STORAGE)}, got {storage!r}")
    return STORES[storage]


def grown(t: torch.Tensor, dim: int, capacity: int, fill=0) -> torch.Tensor:
    """``t`` with ``capacity`` entries along ``dim``: the first ones copied, the rest ``fill``."""
    shape = list(t.shape)
    keep = min(capacity, shape[dim])
    shape[dim] = capacity
    out = torch.full(shape, fill, dtype=t.dtype, device=t.device)
    out.narrow(dim, 0, keep).copy_(t.narrow(dim, 0, keep))
    return out

