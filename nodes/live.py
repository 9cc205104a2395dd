"""Per-chunk cache statistics pushed to the browser (the web extension's live cache view)."""

from __future__ import annotations

EVENT = "pafu.cache"


def send_chunk_stats(node_id, stats, total_frames: int, policy: str) -> None:
    try:
        from server import PromptServer
    except ImportError:            # no server (e.g. a script using ComfyUI as a library)
        return
    server = getattr(PromptServer, "instance", None)
    if server is None:
        return
    server.send_sync(EVENT, {
        "node": node_id, "policy": policy, "chunk": stats.chunk, "frame_end": stats.frame_start + stats.frames,
        "total_frames": total_frames, "tokens": stats.tokens_per_layer, "kv_bytes": stats.kv_bytes,
        "cache_bytes": stats.cache_bytes, "chunk_ms": round(stats.chunk_ms, 2), "policy_ms": round(stats.policy_ms, 3),
    })
