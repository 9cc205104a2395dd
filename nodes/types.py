"""The pack's custom socket types (what flows along the graph's wires between PaFu nodes)."""

from comfy_api.latest import io

PafuHead = io.Custom("PAFU_HEAD")        # pafu_core.salience.SalienceHead
PafuCache = io.Custom("PAFU_CACHE")      # pafu_core.settings.CacheSettings
PafuReport = io.Custom("PAFU_REPORT")    # pafu_core.report.CacheReport
PafuTimeline = io.Custom("PAFU_TIMELINE")  # TimelineChanges (nodes/timeline.py): prompt changes, re-caching
