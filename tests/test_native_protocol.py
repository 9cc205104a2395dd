"""The native patch against core-like causal models written here (no ComfyUI): the newer core's access pattern
(``end`` as a tensor read with ``.item()`` and set with ``fill_``, reads ``k[:, :new_end].reshape(b, -1, n * d)``,
q/k/v in a container before attention) gives core's latents at keep-all, and every drift from the protocol is
refused in one sentence that names the ComfyUI version, at patch time or after the first pass."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pafu_core.budget import CacheBudget
from pafu_core.native import NativeKVCaches, wrap_forward_block, wrap_init_kv_caches
from pafu_core.native_protocol import NativeProtocolError, check_native_protocol, comfyui_version
from pafu_core.policies import make_policy


class QKV:
    """The newer core's attention container: q, k and v travel together into attention."""

    def __init__(self, q, k, v):
        self.q, self.k, self.v = q, k, v


def attention(box: QKV, heads: int) -> torch.Tensor:
    b, s, _ = box.q.shape
    split = lambda t: t.view(b, t.shape[1], heads, -1).transpose(1, 2)             # noqa: E731
    return F.scaled_dot_product_attention(split(box.q), split(box.k), split(box.v)).transpose(1, 2).reshape(b, s, -1)


class SelfAttention(nn.Module):
    """Core's cached self-attention; ``read`` picks how the cache is read (``reshape`` = newer core, ``view`` = 0.27,
    ``none`` = attends to its own block only, ``window`` = the last 16 slots only)."""

    def __init__(self, dim, heads, read="reshape", end_out=None):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_k = nn.LayerNorm(dim)
        self.heads, self.read, self.end_out = heads, read, end_out

    def forward(self, x, pos, cache):
        b, s, n = *x.shape[:2], self.heads
        d = x.shape[-1] // n
        q = (self.q(x) + pos).view(b, s, n, d)
        k = (self.norm_k(self.k(x)) + pos).view(b, s, n, d)                         # "roped" keys are cached
        v = self.v(x).view(b, s, n, d)
        tensor_end = isinstance(cache["end"], torch.Tensor)
        end = cache["end"].item() if tensor_end else cache["end"]
        new_end = end + s
        cache["k"][:, end:new_end] = k
        cache["v"][:, end:new_end] = v
        if self.end_out is not None:
            cache["end"] = self.end_out(new_end)
        elif tensor_end:
            cache["end"].fill_(new_end)
        else:
            cache["end"] = new_end
        if self.read == "none":
            keys, values = k, v
        elif self.read == "window":
            keys, values = cache["k"][:, max(0, new_end - 16):new_end], cache["v"][:, max(0, new_end - 16):new_end]
        elif self.read == "view":
            keys = cache["k"][:, :new_end].view(b, new_end, n * d)
            values = cache["v"][:, :new_end].view(b, new_end, n * d)
        else:
            keys, values = cache["k"][:, :new_end], cache["v"][:, :new_end]
        return self.o(attention(QKV(q.reshape(b, s, n * d), keys.reshape(b, -1, n * d), values.reshape(b, -1, n * d)),
                                n))


class TinyCausal(nn.Module):
    """A causal-Wan stand-in: core's ``forward_block`` / ``init_kv_caches`` protocol over tokens of 1x1 patches."""

    patch_size = (1, 1, 1)

    def __init__(self, end="tensor", read="reshape", layers=2, dim=32, heads=2, channels=4, **attn):
        super().__init__()
        torch.manual_seed(0)
        self.end, self.num_layers, self.num_heads, self.head_dim = end, layers, heads, dim // heads
        self.embed, self.time, self.out = nn.Linear(channels, dim), nn.Linear(1, dim), nn.Linear(dim, channels)
        reads = read if isinstance(read, (list, tuple)) else [read] * layers
        self.blocks = nn.ModuleList(SelfAttention(dim, heads, r, **attn) for r in reads)
        self.register_buffer("freqs", torch.linspace(0.1, 3.0, dim))

    def forward_block(self, x, timestep, context, start_frame, kv_caches, crossattn_caches, clip_fea=None):
        b, c, t, h, w = x.shape
        frames = start_frame + torch.arange(t).repeat_interleave(h * w)
        pos = torch.sin(frames[:, None] * self.freqs)
        y = self.embed(x.flatten(2).transpose(1, 2)) + self.time(timestep.repeat_interleave(h * w, 1)[..., None] / 1e3)
        for block, cache in zip(self.blocks, kv_caches):
            y = y + block(y, pos, cache)
        return self.out(y).transpose(1, 2).reshape(b, c, t, h, w)

    def init_kv_caches(self, batch_size, max_seq_len, device, dtype):
        shape = (batch_size, max_seq_len, self.num_heads, self.head_dim)
        end = {"int": lambda: 0, "tensor": lambda: torch.tensor([0], dtype=torch.long, device=device),
               "float": lambda: torch.tensor([0.0], device=device)}[self.end]
        zeros = lambda: torch.zeros(shape, device=device, dtype=dtype)                 # noqa: E731
        return [{"k": zeros(), "v": zeros(), "end": end()} for _ in range(self.num_layers)]


def sample(model, latent, block=2, steps=(1000.0, 600.0, 300.0)):
    """Core's ``sample_ar_video`` in miniature: caches for the whole video, each block's passes rewound with
    ``end -= block`` (in place for a tensor), then a commit pass at timestep 0; keyword calls as core's ``forward``."""
    b, _, frames, h, w = latent.shape
    caches = model.init_kv_caches(b, frames * h * w, latent.device, latent.dtype)
    out = torch.zeros_like(latent)
    with torch.no_grad():
        for f in range(0, frames, block):
            bf = min(block, frames - f)
            x = latent[:, :, f:f + bf]
            for t in steps:
                x = x - 0.3 * model.forward_block(x=x, timestep=torch.full((b, bf), t), context=None, start_frame=f,
                                                  kv_caches=caches, crossattn_caches=None)
                for cache in caches:
                    cache["end"] -= bf * h * w
            out[:, :, f:f + bf] = x
            model.forward_block(x, torch.zeros(b, bf), None, f, caches, None)
    return out


def patch(model, policy="keep_all", budget=None, caches=None):
    """What the node does through ``add_object_patch``: both methods replaced on the instance."""
    check_native_protocol(model)

    def build(batch, max_seq_len, device, dtype):
        owner = NativeKVCaches(policy=make_policy(policy), budget=budget, num_layers=model.num_layers, batch=batch,
                               num_heads=model.num_heads, head_dim=model.head_dim, max_seq_len=max_seq_len,
                               device=device, dtype=dtype)
        if caches is not None:
            caches.append(owner)
        return owner

    model.init_kv_caches = wrap_init_kv_caches(model, build)
    model.forward_block = wrap_forward_block(model, type(model).forward_block.__get__(model))
    return model


@pytest.fixture
def version(monkeypatch):
    monkeypatch.setitem(sys.modules, "comfyui_version", types.SimpleNamespace(__version__="0.38.0"))
    return "ComfyUI 0.38.0"


def one_sentence(err, version: str, *words: str) -> None:
    msg = str(err.value)
    assert isinstance(err.value, NativeProtocolError) and msg.endswith(".") and ". " not in msg, msg
    assert version in msg and all(w in msg for w in words), msg


LATENT = torch.randn(2, 4, 6, 2, 3, generator=torch.Generator().manual_seed(1))   # batch 2: reads are strided


@pytest.mark.parametrize("end,read", [("tensor", "reshape"), ("int", "reshape"), ("int", "view")])
def test_keep_all_patch_gives_core_latents(end, read):
    plain = sample(TinyCausal(end, read), LATENT)
    ours = sample(patch(TinyCausal(end, read)), LATENT)
    torch.testing.assert_close(ours, plain)


def test_budgeted_patch_with_tensor_end_bounds_the_cache():
    caches = []
    out = sample(patch(TinyCausal("tensor"), "fifo", CacheBudget(2, "latent_frames"), caches), LATENT)
    cache = caches[0].cache
    assert torch.isfinite(out).all() and cache.length == cache.budget_tokens == 12 and cache.evicted_total > 0


def test_refuses_a_model_without_forward_block(version):
    class NoBlock(TinyCausal):
        forward_block = None
    with pytest.raises(NativeProtocolError) as err:
        check_native_protocol(NoBlock())
    one_sentence(err, version, "no forward_block method")


def test_refuses_another_forward_block_signature(version):
    class Reordered(TinyCausal):
        def forward_block(self, x, timestep, context, kv_caches, start_frame, crossattn_caches, clip_fea=None):
            raise AssertionError("never called")
    with pytest.raises(NativeProtocolError) as err:
        check_native_protocol(Reordered())
    one_sentence(err, version, "forward_block takes (x, timestep, context, kv_caches, start_frame")


def test_refuses_another_layer_dict(version):
    class Extra(TinyCausal):
        def init_kv_caches(self, batch_size, max_seq_len, device, dtype):
            caches = super().init_kv_caches(batch_size, max_seq_len, device, dtype)
            return [dict(layer, global_end=0) for layer in caches]
    with pytest.raises(NativeProtocolError) as err:
        check_native_protocol(Extra())
    one_sentence(err, version, "global_end")


def test_refuses_an_unexpected_end_type_at_patch_time(version):
    with pytest.raises(NativeProtocolError) as err:
        check_native_protocol(TinyCausal("float"))
    one_sentence(err, version, "'end' is a float32 tensor of shape [1]")


def test_refuses_an_end_whose_type_changes_in_attention(version):
    with pytest.raises(NativeProtocolError) as err:
        sample(patch(TinyCausal("tensor", end_out=int)), LATENT)
    one_sentence(err, version, "layer 0", "left 'end' as an int", "made a tensor")


def test_refuses_a_layer_that_never_reads_through_the_cache(version):
    with pytest.raises(NativeProtocolError) as err:
        sample(patch(TinyCausal("tensor", read=["reshape", "none"])), LATENT)
    one_sentence(err, version, "layer 1 never read its keys")


def test_refuses_a_windowed_read(version):
    with pytest.raises(NativeProtocolError) as err:
        sample(patch(TinyCausal("int", read="window")), LATENT)
    one_sentence(err, version, "layer 0 read slots")


def test_version_from_the_file_beside_a_namespace_package(tmp_path, monkeypatch):
    root = tmp_path / "ComfyUI"
    (root / "fakecomfy").mkdir(parents=True)
    (root / "comfyui_version.py").write_text('__version__ = "0.38.1"\n')
    (root / "fakecomfy" / "model.py").write_text("class M:\n    pass\n")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, "comfyui_version", raising=False)
    from fakecomfy.model import M
    assert comfyui_version(M()) == "ComfyUI 0.38.1"
    assert comfyui_version(TinyCausal()) == comfyui_version(None) == "this ComfyUI (version unknown)"


def test_refuses_a_query_policy_on_blocks_that_expose_no_queries(version):
    """participative / deep_forcing score with the newest frames' queries, captured after norm_q: a model without it
    is refused at patch time, before any sampling."""
    with pytest.raises(NativeProtocolError) as err:
        check_native_protocol(TinyCausal("tensor"), needs_queries=True)
    one_sentence(err, version, "expose no queries", "norm_q")
