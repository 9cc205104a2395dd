"""ComfyUI entry point of the PaFu-KV node pack.

Inside ComfyUI this registers the nodes (V3 ``comfy_entrypoint``) and the web extension. Outside
ComfyUI (tests, scripts) importing the package must not fail: ``pafu_core`` never needs ComfyUI.
"""

WEB_DIRECTORY = "./web"

try:
    from .nodes import comfy_entrypoint  # noqa: F401  (needs ComfyUI's comfy_api)
except ImportError as err:  # pragma: no cover - only outside ComfyUI
    if "comfy" not in str(err):
        raise

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
