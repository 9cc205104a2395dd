"""Independent references: the math written out again from the Wan 2.1 paper code and the
definitions, never through the project's own functions, so a wrong sign or a missing norm shows."""

import math

import pytest
import torch
import torch.nn.functional as F

from pafu_core.budget import CacheBudget
from pafu_core.policies import PaFuSalience, make_policy
from pafu_core.salience import HeadConfig, SalienceHead
from pafu_core.sampler import sample_video
from pafu_core.schedule import SamplerConfig, warp_timesteps


def naive_wan(model, x, t, ctx):
    """Wan 2.1's forward as in the original repository: per-frame timesteps t [B, F], complex RoPE."""
    cfg = model.config
    b, n_heads, d = x.shape[0], cfg.num_heads, cfg.head_dim
    tok = F.conv3d(x, model.patch_embedding.weight, model.patch_embedding.bias, stride=cfg.patch_size)
    f, h, w = tok.shape[2:]
    tok = tok.flatten(2).transpose(1, 2)                                       # [B, N, C]
    per_frame = h * w

    def lin(mod, z):
        return z @ mod.weight.T + mod.bias

    def rms(mod, z):
        return z * torch.rsqrt(z.pow(2).mean(-1, keepdim=True) + cfg.eps) * mod.weight

    half = cfg.freq_dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64) / half)
    ang = t.double().flatten()[:, None] * freqs[None]
    sin_emb = torch.cat([torch.cos(ang), torch.sin(ang)], dim=1).float()
    te = model.time_embedding
    e = lin(te[2], F.silu(lin(te[0], sin_emb))).view(b, f, -1)                # [B, F, C]
    e0 = lin(model.time_projection[1], F.silu(e)).view(b, f, 6, -1)
    tx = model.text_embedding
    context = lin(tx[2], F.gelu(lin(tx[0], ctx), approximate="tanh"))

    axes = [d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)]
    tables = [torch.outer(torch.arange(64, dtype=torch.float64),
                          1.0 / 10000 ** (torch.arange(0, a, 2, dtype=torch.float64) / a)) for a in axes]
    ft, fh, fw = [torch.polar(torch.ones_like(tb), tb) for tb in tables]
    rope = torch.cat([ft[:f].view(f, 1, 1, -1).expand(f, h, w, -1), fh[:h].view(1, h, 1, -1).expand(f, h, w, -1),
                      fw[:w].view(1, 1, w, -1).expand(f, h, w, -1)], dim=-1).reshape(f * h * w, 1, -1)

    def rotate(z):
        zc = torch.view_as_complex(z.double().reshape(b, -1, n_heads, d // 2, 2))
        return torch.view_as_real(zc * rope).flatten(3).float()

    def attend(q, k, v):
        p = torch.softmax(torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(d), dim=-1)
        return torch.einsum("bhij,bjhd->bihd", p, v).flatten(2)

    def by_frame(m):                                                            # [B, F, C] -> [B, N, C]
        return m.repeat_interleave(per_frame, dim=1)

    for blk in model.blocks:
        mod = [by_frame(m) for m in (blk.modulation.unsqueeze(0) + e0).unbind(2)]
        hdd = F.layer_norm(tok, tok.shape[-1:], eps=cfg.eps) * (1 + mod[1]) + mod[0]
        sa = blk.self_attn
        q = rotate(rms(sa.norm_q, lin(sa.q, hdd)).view(b, -1, n_heads, d))
        k = rotate(rms(sa.norm_k, lin(sa.k, hdd)).view(b, -1, n_heads, d))
        v = lin(sa.v, hdd).view(b, -1, n_heads, d)
        tok = tok + lin(sa.o, attend(q, k, v)) * mod[2]
        ca = blk.cross_attn
        normed = F.layer_norm(tok, tok.shape[-1:], blk.norm3.weight, blk.norm3.bias, cfg.eps)
        cq = rms(ca.norm_q, lin(ca.q, normed)).view(b, -1, n_heads, d)
        ck = rms(ca.norm_k, lin(ca.k, context)).view(b, -1, n_heads, d)
        cv = lin(ca.v, context).view(b, -1, n_heads, d)
        tok = tok + lin(ca.o, attend(cq, ck, cv))
        hdd = F.layer_norm(tok, tok.shape[-1:], eps=cfg.eps) * (1 + mod[4]) + mod[3]
        tok = tok + lin(blk.ffn[2], F.gelu(lin(blk.ffn[0], hdd), approximate="tanh")) * mod[5]
    shift, scale = [by_frame(m) for m in (model.head.modulation.unsqueeze(0) + e.unsqueeze(2)).unbind(2)]
    out = lin(model.head.head, F.layer_norm(tok, tok.shape[-1:], eps=cfg.eps) * (1 + scale) + shift)
    pt, ph, pw = cfg.patch_size
    out = out.view(b, f, h, w, pt, ph, pw, cfg.out_dim).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return out.reshape(b, cfg.out_dim, f * pt, h * ph, w * pw)


def test_full_forward_equals_the_original_wan_math(tiny_model):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 3, 8, 8, generator=gen)
    t = torch.tensor([[900.0, 500.0, 100.0], [10.0, 300.0, 999.0]])
    ctx = torch.randn(2, 5, 4096, generator=gen)
    with torch.no_grad():
        got = tiny_model(x, t, ctx)
        ref = naive_wan(tiny_model, x, t, ctx)
    assert torch.allclose(got, ref, atol=1e-4, rtol=1e-3), (got - ref).abs().max()


def test_timestep_warp_values():
    # sigma = shift * s / (1 + (shift - 1) s): Self-Forcing's 1000/750/500/250 at shift 5
    assert warp_timesteps([1000, 750, 500, 250], 5.0) == pytest.approx([1.0, 15 / 16, 5 / 6, 5 / 8])
    assert warp_timesteps([500], 1.0) == pytest.approx([0.5])


def test_cfg_mix_is_uncond_plus_scale_times_difference(runner):
    gen = torch.Generator().manual_seed(4)
    cond, neg = torch.randn(1, 5, 4096, generator=gen), torch.randn(1, 5, 4096, generator=gen)
    noise = torch.randn(1, 16, 3, 8, 8, generator=gen)
    kw = dict(num_frames=3, height=8, width=8, policy=make_policy("keep_all"), budget=None, noise=noise,
              config=SamplerConfig(timesteps=(1000.0,)))
    x0_c = sample_video(runner, cond, **kw).latents
    x0_u = sample_video(runner, neg, **kw).latents
    guided = sample_video(runner, cond, negative=neg, cfg=3.0, **kw).latents
    # one step from sigma 1: x0 = x - flow, and flow mixes linearly
    assert torch.allclose(guided, x0_u + 3.0 * (x0_c - x0_u), atol=1e-4)


def test_head_features_are_layer_normed_keys_and_values():
    head = SalienceHead(HeadConfig(num_layers=2, dim=8, num_heads=2))
    gen = torch.Generator().manual_seed(0)
    keys, values = torch.randn(2, 1, 5, 2, 4, generator=gen) * 7 + 3, torch.randn(2, 1, 5, 2, 4, generator=gen)
    got = head.features(keys, values, None)

    def norm(z):
        z = z.reshape(2, 1, 5, 8)
        return (z - z.mean(-1, keepdim=True)) / torch.sqrt(z.var(-1, unbiased=False, keepdim=True) + 1e-5)

    assert torch.allclose(got, torch.cat([norm(keys), norm(values)], dim=-1), atol=1e-5)


def test_recency_adds_to_newer_tokens():
    head = SalienceHead(HeadConfig(num_layers=1, dim=8, num_heads=1, recency=0.5))

    class View:
        def __init__(self, frames):
            self.frames = frames

        def entering_state(self, name):
            return torch.zeros(1, 1, len(self.frames))

        @property
        def entering_frame_index(self):
            return torch.tensor(self.frames).view(1, 1, -1)

    scores = PaFuSalience(head).score(View([2, 5, 9]))
    assert scores.flatten().tolist() == [1.0, 2.5, 4.5]      # 0.5 salience per frame, newer is higher



def test_recency_of_a_rescoring_head_takes_salience_per_frame_of_age():
    """Re-scoring heads: the fixed term is subtracted per frame of age, after the learned re-scorer."""
    torch.manual_seed(0)
    plain = SalienceHead(HeadConfig(num_layers=1, dim=8, num_heads=1, rescore=True))
    aged = SalienceHead(HeadConfig(num_layers=1, dim=8, num_heads=1, rescore=True, recency=0.25),
                        tensors={n: getattr(plain, n).detach() for n in plain.config.tensor_shapes()})
    newest, frames = 9, torch.tensor([[[0, 4, 7, 9]]])

    class View:
        start, end, tokens_per_frame, newest_frame = 3, 4, 1, newest
        place = torch.zeros(1, 1, 4, dtype=torch.int32)
        frame_index = frames

        def __init__(self):
            self.channels = {"entry": torch.tensor([[[0.3, -0.2, 0.8, 0.1]]]),
                             "newer": torch.full((1, 1, 4), float("-inf"))}

        def state(self, name):
            return self.channels[name]

        def entering_state(self, name):
            return self.channels[name][:, :, self.start:]

    with torch.no_grad():
        base, got = PaFuSalience(plain).score(View()), PaFuSalience(aged).score(View())
    age = (newest - frames).float()
    assert torch.allclose(got, base - 0.25 * age)
    assert torch.allclose((got - base).flatten(), torch.tensor([-2.25, -1.25, -0.5, 0.0]))   # older loses more

def test_cache_budget_units_values():
    assert CacheBudget(0.25, unit="fraction").tokens(1560) == 8190
    assert CacheBudget(0.125, unit="fraction", reference_frames=36).tokens(16) == 72
