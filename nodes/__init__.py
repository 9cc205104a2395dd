"""ComfyUI nodes of the PaFu-KV pack (V3 schema). Thin: every algorithm lives in pafu_core."""

from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

from . import paths
from .ar_loader import PaFuARCheckpointLoader
from .cache_budget import PaFuKVCacheBudget
from .cache_patch import PaFuKVCachePatch
from .make_head import PaFuDistillSalienceHead, PaFuPromptList
from .head_loader import PaFuSalienceHeadLoader
from .report import PaFuCacheReport
from .sampler import PaFuARChunkSampler
from .timeline import PaFuPromptTimeline, PaFuTimelineGuider
from .tiny_world import PaFuTinyWorldDecode, PaFuTinyWorldModel, PaFuTinyWorldScene, PaFuTinyWorldStart

NODES = [PaFuSalienceHeadLoader, PaFuKVCacheBudget, PaFuARChunkSampler, PaFuKVCachePatch, PaFuCacheReport,
         PaFuPromptTimeline, PaFuTimelineGuider, PaFuARCheckpointLoader, PaFuTinyWorldModel, PaFuTinyWorldScene,
         PaFuTinyWorldStart, PaFuTinyWorldDecode, PaFuPromptList, PaFuDistillSalienceHead]


class PaFuExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> PaFuExtension:
    paths.register()
    return PaFuExtension()
