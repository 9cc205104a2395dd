"""Bad input fails early with a ValueError that names the parameter."""

import pytest
import torch

from pafu_core.adapter import WanChunkRunner
from pafu_core.budget import CacheBudget
from pafu_core.policies import make_policy
from pafu_core.sampler import sample_video
from pafu_core.schedule import SamplerConfig, parse_timesteps


@pytest.mark.parametrize("kwargs,match", [
    (dict(chunk_frames=0), "chunk_frames"),
    (dict(timesteps=()), "timesteps is empty"),
    (dict(timesteps=(500, 750)), "strictly decreasing"),
    (dict(timesteps=(1200, 500)), r"\(0, 1000\]"),
    (dict(timesteps=(1000, 0)), r"\(0, 1000\]"),
    (dict(shift=0), "shift"),
    (dict(context_timestep=1000), "context_timestep"),
])
def test_sampler_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplerConfig(**kwargs)


def test_parse_timesteps():
    assert parse_timesteps("1000, 750,500 ,250") == (1000, 750, 500, 250)
    with pytest.raises(ValueError, match="comma-separated"):
        parse_timesteps("1000, lots")


def run(runner, context, **kw):
    args = dict(num_frames=6, height=8, width=8, policy=make_policy("fifo"), budget=CacheBudget(3))
    args.update(kw)
    return sample_video(runner, context, **args)


def test_wrong_latent_channels(runner, context):
    with pytest.raises(ValueError, match="channels but the model expects 16"):
        run(runner, context, noise=torch.randn(1, 4, 6, 8, 8))


def test_wrong_conditioning_width(runner):
    with pytest.raises(ValueError, match="conditioning must be"):
        run(runner, torch.randn(1, 7, 768))


def test_budget_below_one_chunk(runner, context):
    with pytest.raises(ValueError, match="smaller than one chunk"):
        run(runner, context, budget=CacheBudget(2))


def test_odd_latent_size(runner, context):
    with pytest.raises(ValueError, match="multiples of the patch"):
        run(runner, context, noise=torch.randn(1, 16, 6, 7, 8))


def test_non_wan_model():
    with pytest.raises(ValueError, match="not a Wan 2.1 diffusion model"):
        WanChunkRunner(torch.nn.Linear(3, 3))
