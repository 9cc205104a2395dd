"""PaFu-KV runtime: a budgeted KV cache with learned salience for autoregressive Wan 2.1 video.

Pure PyTorch; never imports ComfyUI, and never the research (``pafu_lab``: distillation, teacher
targets, the tiny world's training and evaluation, the demo). See docs/code_map.md.
"""

from .adapter import WanChunkRunner
from .budget import CacheBudget, cache_bytes_for
from .cache import KVCache
from .ops import TorchOps
from .policies import Policy, make_policy, policy_names, register_policy
from .report import CacheReport, ChunkStats
from .rollout import SampleResult
from .salience import HeadConfig, SalienceHead, load_head, save_head
from .sampler import sample_video
from .schedule import SamplerConfig
from .settings import CacheSettings
from .wan import WAN21_1_3B, WanConfig, WanDiT, load_wan_checkpoint, load_wan_state_dict, tiny_config

__all__ = [
    "WanChunkRunner", "CacheBudget", "KVCache", "cache_bytes_for", "TorchOps", "policy_names",
    "register_policy", "Policy", "make_policy", "CacheReport", "ChunkStats", "SampleResult", "SamplerConfig",
    "sample_video", "WAN21_1_3B", "WanConfig", "WanDiT", "load_wan_checkpoint",
    "load_wan_state_dict", "tiny_config", "HeadConfig", "SalienceHead", "load_head", "save_head",
    "CacheSettings",
]
