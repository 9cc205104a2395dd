import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from pafu_core.adapter import WanChunkRunner  # noqa: E402
from pafu_core.wan import WanDiT, init_weights_, tiny_config  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model():
    torch.manual_seed(0)
    return init_weights_(WanDiT(tiny_config(dim=128, num_layers=2)), seed=0).eval()


@pytest.fixture(scope="session")
def runner(tiny_model):
    return WanChunkRunner(tiny_model)


@pytest.fixture
def context():
    return torch.randn(1, 7, 4096, generator=torch.Generator().manual_seed(3))
