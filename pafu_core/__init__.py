"""PaFu-KV core: a budgeted KV cache with learned salience for autoregressive Wan 2.1 video.

Pure PyTorch; never imports ComfyUI. See README.md for the map of modules.
"""

from .adapter import WanChunkRunner
from .cache import CacheBudget, KVCache, cache_bytes_for
from .ops import TorchOps
from .policies import Policy, make_policy, policy_names, register_policy
from .report import CacheReport, ChunkStats
from .salience import HeadConfig, SalienceHead, load_head, save_head
from .sampler import SampleResult, SamplerConfig, sample_video
from .settings import CacheSettings
from .teacher import SSEConfig, sse_targets
from .wan import WAN21_1_3B, WanConfig, WanDiT, load_wan_checkpoint, load_wan_state_dict, tiny_config



def __getattr__(name):
    """The distillation entry points load lazily, so `python -m pafu_core.distill` runs cleanly."""
    if name in ("DistillConfig", "run_distillation"):
        from . import distill as _distill
        return _distill.DistillConfig if name == "DistillConfig" else _distill.distill
    raise AttributeError(f"module 'pafu_core' has no attribute {name!r}")


__all__ = [
    "WanChunkRunner", "CacheBudget", "KVCache", "cache_bytes_for", "TorchOps", "policy_names",
    "register_policy", "Policy", "make_policy", "CacheReport", "ChunkStats", "SampleResult", "SamplerConfig",
    "sample_video", "WAN21_1_3B", "WanConfig", "WanDiT", "load_wan_checkpoint",
    "load_wan_state_dict", "tiny_config", "DistillConfig", "run_distillation", "HeadConfig", "SalienceHead",
    "load_head", "save_head", "CacheSettings", "SSEConfig", "sse_targets",
]
