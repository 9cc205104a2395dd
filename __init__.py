"""ComfyUI entry point of the PaFu-KV node pack.

Inside ComfyUI this registers the nodes (V3 ``comfy_entrypoint``) and the web extension. Outside
ComfyUI (tests, scripts, a bare import of this file) it registers nothing and never fails:
``pafu_core`` never needs ComfyUI. Inside ComfyUI any import error is real and surfaces there.
"""

import importlib.util

WEB_DIRECTORY = "./web"

if __package__ and importlib.util.find_spec("comfy_api") is not None:
    from .nodes import comfy_entrypoint  # noqa: F401
