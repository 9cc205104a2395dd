"""ComfyUI entry point of the PaFu-KV node pack.

Inside ComfyUI this registers the nodes (V3 ``comfy_entrypoint``) and the web extension. Outside
ComfyUI (tests, scripts; or loaded as a plain module from a folder whose name is no valid package
name) importing this file must not fail: ``pafu_core`` never needs ComfyUI.
"""

WEB_DIRECTORY = "./web"

if __package__:
    try:
        from .nodes import comfy_entrypoint  # noqa: F401  (needs ComfyUI's comfy_api)
    except ImportError as err:  # pragma: no cover - only outside ComfyUI
        if "comfy" not in str(err):
            raise
