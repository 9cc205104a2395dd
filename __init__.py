"""ComfyUI entry point for the PaFu-KV node pack (nodes arrive in nodes/)."""

WEB_DIRECTORY = "./web"
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
