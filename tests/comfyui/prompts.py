"""API-format prompts for the tiny world (what the frontend sends when Run is pressed)."""

from __future__ import annotations


def tiny_prompt(policy: str = "pafu", frames: int = 36, seed: int = 7, budget: float = 0.25,
                budget_unit: str = "fraction", head_name: str = "pafu_tiny_world.safetensors",
                latent_node: dict | None = None, prefix: str = "pafu_ring", model_node: dict | None = None) -> dict:
    prompt = {
        "model": model_node or {"class_type": "PaFuTinyWorldModel", "inputs": {}},
        "shift": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["model", 0], "shift": 5.0}},
        "scene": {"class_type": "PaFuTinyWorldScene", "inputs": {"style": "blue", "latent_frames": frames,
                                                                 "batch_size": 1}},
        "budget": {"class_type": "PaFuKVCacheBudget", "inputs": {
            "policy": policy, "budget": budget, "budget_unit": budget_unit,
            "sink_frames": 1 if policy == "sink_window" else 0, "reference_frames": 36}},
        "head": {"class_type": "PaFuSalienceHeadLoader", "inputs": {
            "source": "local", "head_name": head_name, "repo_id": "", "filename": ""}},
        "sampler": {"class_type": "PaFuARChunkSampler", "inputs": {
            "model": ["shift", 0], "positive": ["scene", 0], "latent": ["scene", 1], "cache": ["budget", 0],
            "head": ["head", 0], "seed": seed, "chunk_frames": 3, "timesteps": "1000,750,500,250",
            "context_timestep": 0.0}},
        "decode": {"class_type": "PaFuTinyWorldDecode", "inputs": {"latent": ["sampler", 0], "scale": 1}},
        "save": {"class_type": "SaveAnimatedWEBP", "inputs": {
            "images": ["decode", 0], "filename_prefix": prefix, "fps": 12.0, "lossless": True, "quality": 100,
            "method": "fastest"}},
    }
    if latent_node is not None:
        prompt["latent"] = latent_node
        prompt["sampler"]["inputs"]["latent"] = ["latent", 0]
    return prompt


def error_message(entry: dict) -> str:
    for kind, data in entry["status"]["messages"]:
        if kind == "execution_error":
            return data["exception_message"]
    return ""


def core_ar_prompt(policy: str = "fifo", frames: int = 12, budget: float = 6.0, budget_unit: str = "latent_frames",
                   model_node: dict | None = None, prefix: str = "pafu_core_ar") -> dict:
    """Core's own AR graph (0.27+): UNETLoader -> PaFu KV Cache Patch -> SamplerARVideo via SamplerCustomAdvanced."""
    prompt = {
        "unet": model_node or {"class_type": "UNETLoader", "inputs": {
            "unet_name": "pafu_tiny_world_student.safetensors", "weight_dtype": "default"}},
        "scene": {"class_type": "PaFuTinyWorldScene", "inputs": {"style": "blue", "latent_frames": frames,
                                                                 "batch_size": 1}},
        "budget": {"class_type": "PaFuKVCacheBudget", "inputs": {
            "policy": policy, "budget": budget, "budget_unit": budget_unit, "sink_frames": 0, "reference_frames": 36}},
        "patch": {"class_type": "PaFuKVCachePatch", "inputs": {"model": ["unet", 0], "cache": ["budget", 0]}},
        "guider": {"class_type": "BasicGuider", "inputs": {"model": ["patch", 0], "conditioning": ["scene", 0]}},
        "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": 3}},
        "ar": {"class_type": "SamplerARVideo", "inputs": {"num_frame_per_block": 3}},
        "sigmas": {"class_type": "BasicScheduler", "inputs": {"model": ["patch", 0], "scheduler": "simple", "steps": 4,
                                                              "denoise": 1.0}},
        "sca": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["noise", 0], "guider": ["guider", 0],
                                                                  "sampler": ["ar", 0], "sigmas": ["sigmas", 0],
                                                                  "latent_image": ["scene", 1]}},
        "decode": {"class_type": "PaFuTinyWorldDecode", "inputs": {"latent": ["sca", 0], "scale": 1}},
        "save": {"class_type": "SaveAnimatedWEBP", "inputs": {
            "images": ["decode", 0], "filename_prefix": prefix, "fps": 12.0, "lossless": True, "quality": 100,
            "method": "fastest"}},
    }
    return prompt
