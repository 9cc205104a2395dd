"""Build the example workflows in the real ComfyUI frontend, so they are saved exactly as it writes them.

    python tools/build_workflows.py --url http://127.0.0.1:8188      # a running ComfyUI with this pack

Each graph is created node by node in headless Chromium (``LiteGraph.createNode``, widget values set by
name, links by slot name) and saved with ``app.graph.serialize()`` into ``workflows/``. The
specifications below are the single source of the example workflows.
"""

from __future__ import annotations

import argparse
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOWS = os.path.join(ROOT, "workflows")

# Model files and URLs exactly as ComfyUI's own templates name them (comfyui-workflow-templates 0.11.1:
# video_causal_forcing_i2v.json); a file no template names gets no URL (see the workflow's note).
TEMPLATE_VAE = {"name": "wan_2.1_vae.safetensors", "directory": "vae",
                "url": "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/vae/wan_2.1_vae.safetensors"}
TEMPLATE_T5 = {"name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "directory": "text_encoders",
               "url": "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors"}
TEMPLATE_CAUSAL_FORCING = {"name": "causal_forcing-framewise.safetensors", "directory": "diffusion_models",
                           "url": "https://huggingface.co/TalmajM/causal_forcing_framewise_ComfyUI_repackaged/resolve/main/split_files/diffusion_models/causal_forcing-framewise.safetensors"}
SELF_FORCING_SAFETENSORS = "self_forcing_dmd.safetensors"     # made by python -m pafu_core.convert: no URL
SELF_FORCING_PT_PAGE = "https://huggingface.co/gdhe17/Self-Forcing (checkpoints/self_forcing_dmd.pt)"
WAN_HEAD_NAME = "pafu_wan21_self_forcing_1.3b.safetensors"
TINY_STUDENT = "pafu_tiny_world_student.safetensors"
NEGATIVE = ("static, blurry details, subtitles, worst quality, low quality, JPEG artifacts, deformed, "
            "extra fingers, poorly drawn hands, poorly drawn face, cluttered background")

FOX_PROMPT = ("A red fox trots along a snowy forest path at dawn, soft golden light through the pines, "
              "breath visible in the cold air, the camera tracking beside it, cinematic, detailed fur.")
#: the UNET and its budget into PaFu KV Cache Patch (the patched graphs' common start; the tiny one adds its head)
PATCH_LINKS = [("unet", "MODEL", "patch", "model"), ("budget", "cache", "patch", "cache")]
#: a node the frontend skips when it queues (LiteGraph's "bypass" mode)
BYPASS = 4

TINY_FRAMES = 360          # 10x the tiny world's 36-frame training clip
HEAD_NOTE = ("**Policy:** `deep_forcing` over the 21-frame window the model was trained with (budget fraction 1.0 of "
             "21 frames): a deep sink (half the window, the video's first frames) with its RoPE phase re-aligned, "
             "the rest kept by the attention the newest frame's queries give (Deep Forcing, arXiv 2512.05081, "
             "training-free, published on Self-Forcing / Wan 2.1 1.3B; not measured by this pack on Wan). Memory "
             "stays bounded at any length; a smaller fraction trades quality for memory. No public PaFu-KV head for "
             "Wan exists yet: to use the learned policy, distil one (`python -m pafu_lab.distill --config "
             "configs/distill_wan21_1.3b.json`), put it in `models/pafu_heads`, un-bypass the PaFu Salience Head "
             "Loader (Ctrl+B), pick the file, connect its head output, and set the budget's policy to `pafu`.")


def sampler(key, x, y, cache, seed=7, chunk_frames=3):
    return {"key": key, "type": "PaFuARChunkSampler", "pos": [x, y],
            "widgets": {"seed": seed, "control_after_generate": "fixed", "chunk_frames": chunk_frames,
                        "timesteps": "1000,750,500,250", "context_timestep": 0.0}}


def budget(key, x, y, policy, sink=0, reference=36, value=0.25):
    return {"key": key, "type": "PaFuKVCacheBudget", "pos": [x, y],
            "widgets": {"policy": policy, "budget": value, "budget_unit": "fraction", "sink_frames": sink,
                        "reference_frames": reference, "seed": 0}}


def tiny_common(frames=TINY_FRAMES):
    """The tiny model with its flow shift set by ModelSamplingSD3 (ComfyUI before 0.27 loads it as a plain
    WanModel with Wan's default shift), its scene and its head."""
    nodes = [
        {"key": "model", "type": "PaFuTinyWorldModel", "pos": [0, 0]},
        {"key": "shift", "type": "ModelSamplingSD3", "pos": [0, 110], "widgets": {"shift": 5.0}},
        {"key": "scene", "type": "PaFuTinyWorldScene", "pos": [0, 230],
         "widgets": {"style": "blue", "latent_frames": frames, "batch_size": 1, "world_seed": 0}},
        {"key": "head", "type": "PaFuSalienceHeadLoader", "pos": [0, 410],
         "widgets": {"source": "local", "head_name": "pafu_tiny_world.safetensors"}},
    ]
    return nodes, [("model", "model", "shift", "model")]


def webp(key, x, y, prefix, size=None):
    return {"key": key, "type": "SaveAnimatedWEBP", "pos": [x, y], **({"size": size} if size else {}),
            "widgets": {"filename_prefix": prefix, "fps": 12.0, "lossless": True, "quality": 80, "method": "default"}}


def tiny_long_video():
    nodes, links = tiny_common()
    nodes += [
        budget("budget", 0, 610, "pafu"),
        sampler("sampler", 420, 0, "budget"),
        {"key": "decode", "type": "PaFuTinyWorldDecode", "pos": [800, 0], "widgets": {"scale": 8}},
        webp("save", 1100, 0, "pafu_tiny_long"),
        {"key": "report", "type": "PaFuCacheReport", "pos": [800, 420]},
        {"key": "curves", "type": "SaveImage", "pos": [1100, 420], "widgets": {"filename_prefix": "pafu_tiny_long_curves"}},
        webp("kept", 1100, 760, "pafu_tiny_long_kept"),
    ]
    links += [("shift", "MODEL", "sampler", "model"), ("scene", "positive", "sampler", "positive"),
              ("scene", "latent", "sampler", "latent"), ("scene", "world", "sampler", "watch"),
              ("budget", "cache", "sampler", "cache"),
              ("head", "head", "sampler", "head"), ("sampler", "latent", "decode", "latent"),
              ("decode", "frames", "save", "images"), ("sampler", "report", "report", "report"),
              ("decode", "frames", "report", "frames"), ("report", "curves", "curves", "images"),
              ("report", "kept_tokens", "kept", "images")]
    return nodes, links


COMPARED = (("keep_all", 0), ("fifo", 0), ("sink_window", 1), ("pafu", 0))


def stitch_row(nodes, links, sources, prefix, x, y):
    """ImageStitch the (node, output) sources left to right; returns the last stitch's key."""
    prev = sources[0]
    for i, src in enumerate(sources[1:]):
        key = f"{prefix}_stitch_{i}"
        nodes.append({"key": key, "type": "ImageStitch", "pos": [x, y + 140 * i],
                      "widgets": {"direction": "right", "match_image_size": False, "spacing_width": 8,
                                  "spacing_color": "white"}})
        links += [(prev[0], prev[1], key, "image1"), (src[0], src[1], key, "image2")]
        prev = (key, "IMAGE")
    return prev[0]


def tiny_comparison():
    nodes, links = tiny_common()
    for i, (policy, sink) in enumerate(COMPARED):
        nodes.append(budget(f"budget_{policy}", 0, 610 + 300 * i, policy, sink=sink))
        nodes.append(sampler(f"sampler_{policy}", 420, 380 * i, f"budget_{policy}"))
        nodes.append({"key": f"decode_{policy}", "type": "PaFuTinyWorldDecode", "pos": [800, 380 * i], "widgets": {"scale": 8}})
        nodes.append({"key": f"report_{policy}", "type": "PaFuCacheReport", "pos": [1100, 380 * i]})
        links += [("shift", "MODEL", f"sampler_{policy}", "model"), ("scene", "positive", f"sampler_{policy}", "positive"),
                  ("scene", "latent", f"sampler_{policy}", "latent"), ("scene", "world", f"sampler_{policy}", "watch"),
                  (f"budget_{policy}", "cache", f"sampler_{policy}", "cache"),
                  (f"sampler_{policy}", "latent", f"decode_{policy}", "latent"),
                  (f"sampler_{policy}", "report", f"report_{policy}", "report"),
                  (f"decode_{policy}", "frames", f"report_{policy}", "frames")]
        if policy == "pafu":
            links.append(("head", "head", f"sampler_{policy}", "head"))
    nodes.append({"key": "decode_world", "type": "PaFuTinyWorldDecode", "pos": [800, 380 * len(COMPARED)],
                  "widgets": {"scale": 8}})
    links.append(("scene", "world", "decode_world", "latent"))
    videos = stitch_row(nodes, links, [("decode_world", "frames")] + [(f"decode_{p}", "frames") for p, _ in COMPARED],
                        "video", 1450, 0)
    kept = stitch_row(nodes, links, [(f"report_{p}", "kept_tokens") for p, _ in COMPARED[1:]], "kept", 1450, 460)
    nodes += [
        webp("save", 1800, 0, "pafu_tiny_compare"),
        webp("save_kept", 1800, 460, "pafu_tiny_compare_kept"),
        {"key": "curves", "type": "SaveImage", "pos": [1800, 800], "widgets": {"filename_prefix": "pafu_tiny_compare_curves"}},
        {"key": "note", "type": "MarkdownNote", "pos": [1450, 860], "size": [420, 240],
         "text": "**Same seed, same budget (25% of the 36-frame training clip), four policies** - left to right: "
                 "the world, then keep-all (unbounded reference), FIFO, sink + window, PaFu. The model watches the "
                 "world: it predicts each chunk from its cache, then sees the real chunk. Three objects hide for 12 "
                 "frames, longer than the FIFO window, and must come back with the colours they had last. The second "
                 "video shows, for FIFO, sink + window and PaFu, which tokens each cache still holds at the end "
                 "(bright = kept): PaFu keeps the objects' latest appearance, FIFO only the last frames."},
    ]
    links += [(videos, "IMAGE", "save", "images"), (kept, "IMAGE", "save_kept", "images"),
              ("report_pafu", "curves", "curves", "images")]
    for other, slot in (("fifo", "report_b"), ("sink_window", "report_c"), ("keep_all", "report_d")):
        links.append((f"sampler_{other}", "report", "report_pafu", slot))
    return nodes, links


DISTILLED_HEAD = "pafu_tiny_world_distilled"
DISTILL_STYLES = ("blue", "red", "green", "violet")     # the last quarter (violet) is held out to judge the head
DISTILL_VIDEOS = 14                                     # world videos per prompt the model watches (72 frames each)


def tiny_distill():
    """Make a head in the graph: the tiny world's model watches 14 videos of each of four prompts, PaFu Distill
    Salience Head distils a head from what it attended to, the sampler uses that head at once, the report
    says how good it is."""
    nodes = [{"key": "model", "type": "PaFuTinyWorldModel", "pos": [0, 0]},
             {"key": "shift", "type": "ModelSamplingSD3", "pos": [0, 110], "widgets": {"shift": 5.0}}]
    links = [("model", "model", "shift", "model")]
    for i, style in enumerate(DISTILL_STYLES):
        nodes.append({"key": f"scene_{i}", "type": "PaFuTinyWorldScene", "pos": [0, 230 + 190 * i],
                      "widgets": {"style": style, "latent_frames": 72, "batch_size": DISTILL_VIDEOS,
                                  "world_seed": 700 + 100 * i}})
    nodes += [
        {"key": "list", "type": "PaFuPromptList", "pos": [400, 230]},
        # the head serves 9 latent frames: 12.5% of its 72-frame clips, the sampler's 25% of 36 frames
        {"key": "distill", "type": "PaFuDistillSalienceHead", "pos": [400, 700],
         "widgets": {"budget": 0.125, "name": DISTILLED_HEAD, "rollouts": 0, "clip_frames": 0, "steps": 0,
                     "chunk_frames": 3, "timesteps": "1000,750,500,250", "seed": 0}},
        {"key": "fidelity", "type": "SaveImage", "pos": [800, 700], "size": [420, 360],
         "widgets": {"filename_prefix": "pafu_tiny_distill_fidelity"}},
        {"key": "summary", "type": "PreviewAny", "pos": [800, 1100], "size": [420, 240]},
        {"key": "watch", "type": "PaFuTinyWorldScene", "pos": [1300, 420],
         "widgets": {"style": "blue", "latent_frames": TINY_FRAMES, "batch_size": 1, "world_seed": 0}},
        budget("budget", 1300, 640, "pafu"),
        sampler("sampler", 1300, 0, "budget"),
        {"key": "decode", "type": "PaFuTinyWorldDecode", "pos": [1680, 0], "widgets": {"scale": 8}},
        webp("save", 1980, 0, "pafu_tiny_distill"),
        {"key": "note", "type": "MarkdownNote", "pos": [1680, 420], "size": [480, 340],
         "text": "**Make a head for your model, in the graph** (no download): the tiny world's model watches "
                 f"{DISTILL_VIDEOS} videos of each of the four prompts of PaFu Prompt List (its videos inputs); "
                 "**PaFu Distill Salience Head** distils a salience head from what later chunks attended to "
                 "(targets -> training -> evaluation, about a minute on a CPU; the node shows the stage and "
                 f"the time left), writes `models/pafu_heads/{DISTILLED_HEAD}.safetensors` and its model card "
                 f"`{DISTILLED_HEAD}.md`, and hands the head to the sampler here. Its report: per-frame "
                 "fidelity to keep-all on the held-out prompt (violet) for the new head, standout, Deep Forcing "
                 "and FIFO at the same budget, and the summary (held-out Spearman and top-k recall). Cancel it "
                 "and queue again: it resumes where it stopped.\n\nFor Wan: your causal-AR Wan model, CLIP Text "
                 "Encode prompts with VAE Encode videos of them (without videos the model rolls the prompts out "
                 "itself: a weaker head), and an empty video latent of the size you generate."},
    ]
    links += [(f"scene_{i}", "positive", "list", f"prompt_{i + 1}") for i in range(len(DISTILL_STYLES))]
    links += [(f"scene_{i}", "world", "list", f"videos_{i + 1}") for i in range(len(DISTILL_STYLES))]
    links += [("shift", "MODEL", "distill", "model"), ("list", "prompts", "distill", "prompts"),
              ("scene_0", "latent", "distill", "latent"), ("distill", "fidelity", "fidelity", "images"),
              ("distill", "summary", "summary", "source"),
              ("shift", "MODEL", "sampler", "model"), ("watch", "positive", "sampler", "positive"),
              ("watch", "latent", "sampler", "latent"), ("watch", "world", "sampler", "watch"),
              ("budget", "cache", "sampler", "cache"), ("distill", "head", "sampler", "head"),
              ("sampler", "latent", "decode", "latent"), ("decode", "frames", "save", "images")]
    return nodes, links

def core_ar(nodes, links, model_key, model_out, positive, latent, block, x, y, negative=None, seed=7):
    """Core's own AR graph: RandomNoise, BasicScheduler (simple, 4 steps), SamplerARVideo, guider, SCA."""
    guider = ({"key": "guider", "type": "CFGGuider", "pos": [x, y], "widgets": {"cfg": 1.0}} if negative else
              {"key": "guider", "type": "BasicGuider", "pos": [x, y]})
    nodes += [
        guider,
        {"key": "noise", "type": "RandomNoise", "pos": [x, y + 140],
         "widgets": {"noise_seed": seed, "control_after_generate": "fixed"}},
        {"key": "ar", "type": "SamplerARVideo", "pos": [x, y + 260], "widgets": {"num_frame_per_block": block}},
        {"key": "sigmas", "type": "BasicScheduler", "pos": [x, y + 370],
         "widgets": {"scheduler": "simple", "steps": 4, "denoise": 1.0}},
        {"key": "sca", "type": "SamplerCustomAdvanced", "pos": [x + 380, y]},
    ]
    links += [(model_key, model_out, "guider", "model"), (model_key, model_out, "sigmas", "model"),
              ("noise", "NOISE", "sca", "noise"), ("guider", "GUIDER", "sca", "guider"),
              ("ar", "SAMPLER", "sca", "sampler"), ("sigmas", "SIGMAS", "sca", "sigmas"),
              (latent[0], latent[1], "sca", "latent_image")]
    if negative:
        links += [(positive[0], positive[1], "guider", "positive"), (negative[0], negative[1], "guider", "negative")]
    else:
        links.append((positive[0], positive[1], "guider", "conditioning"))


def tiny_core_ar():
    nodes = [
        {"key": "unet", "type": "UNETLoader", "pos": [0, 0], "widgets": {"unet_name": TINY_STUDENT, "weight_dtype": "default"}},
        {"key": "scene", "type": "PaFuTinyWorldScene", "pos": [0, 140],
         "widgets": {"style": "blue", "latent_frames": TINY_FRAMES, "batch_size": 1}},
        {"key": "head", "type": "PaFuSalienceHeadLoader", "pos": [0, 360],
         "widgets": {"source": "local", "head_name": "pafu_tiny_world.safetensors"}},
        budget("budget", 0, 560, "pafu"),
        {"key": "patch", "type": "PaFuKVCachePatch", "pos": [400, 0]},
        {"key": "decode", "type": "PaFuTinyWorldDecode", "pos": [1200, 0], "widgets": {"scale": 8}},
        webp("save", 1500, 0, "pafu_tiny_core_ar", size=[340, 520]),
        {"key": "note", "type": "MarkdownNote", "pos": [1000, 620], "size": [480, 200],
         "text": "**ComfyUI's own autoregressive sampler with a PaFu cache** (ComfyUI 0.27+): core's `UNETLoader` "
                 f"loads the tiny world's causal student (`{TINY_STUDENT}`, shipped with the pack) as a "
                 "`CausalWanModel`; **PaFu KV Cache Patch** bounds the cache of `SamplerARVideo` (3 frames per "
                 "block) at 25% of the 36-frame training clip, for a 360-frame video. The latent comes from "
                 "PaFu Tiny World Scene: core's EmptyARVideoLatent assumes Wan's 4x VAE stride."},
    ]
    links = PATCH_LINKS + [("head", "head", "patch", "head")]
    core_ar(nodes, links, "patch", "model", ("scene", "positive"), ("scene", "latent"), 3, 400, 400)
    links += [("sca", "output", "decode", "latent"), ("decode", "frames", "save", "images")]
    return nodes, links


def wan_text_nodes(prompt, x=0, y=200):
    return [
        {"key": "clip", "type": "CLIPLoader", "pos": [x, y], "models": [TEMPLATE_T5],
         "widgets": {"clip_name": TEMPLATE_T5["name"], "type": "wan", "device": "default"}},
        {"key": "text", "type": "CLIPTextEncode", "pos": [x + 380, y], "size": [420, 160], "widgets": {"text": prompt}},
        {"key": "neg", "type": "CLIPTextEncode", "pos": [x + 380, y + 200], "size": [420, 120], "widgets": {"text": NEGATIVE}},
        {"key": "vae", "type": "VAELoader", "pos": [x, y + 160], "models": [TEMPLATE_VAE],
         "widgets": {"vae_name": TEMPLATE_VAE["name"]}},
    ]


def wan_head_budget(x, y, reference=21):
    """The budget on the head-free Wan default (Deep Forcing over the trained window), and a head loader left bypassed and unconnected (no Wan head
    exists to download): the graph runs with the documented downloads alone."""
    return [budget("budget", x, y, "deep_forcing", reference=reference, value=1.0),
            {"key": "head", "type": "PaFuSalienceHeadLoader", "pos": [x, y + 330], "mode": BYPASS,
             "widgets": {"source": "local", "head_name": ""}}]


def video_out(nodes, links, latent_src, x, y, prefix, fps=16):
    nodes += [{"key": "decode", "type": "VAEDecode", "pos": [x, y]},
              {"key": "video", "type": "CreateVideo", "pos": [x, y + 120], "widgets": {"fps": fps}},
              {"key": "save", "type": "SaveVideo", "pos": [x + 300, y],
               "widgets": {"filename_prefix": prefix, "format": "auto", "codec": "auto"}}]
    links += [(latent_src[0], latent_src[1], "decode", "samples"), ("vae", "VAE", "decode", "vae"),
              ("decode", "IMAGE", "video", "images"), ("video", "VIDEO", "save", "video")]


def wan_causal_forcing_i2v():
    prompt = ("A blonde girl rides a white wolf running forward at night, camera locked on them, "
              "always centered in the shot.")
    nodes = [{"key": "unet", "type": "UNETLoader", "pos": [0, 0], "models": [TEMPLATE_CAUSAL_FORCING],
              "widgets": {"unet_name": TEMPLATE_CAUSAL_FORCING["name"], "weight_dtype": "default"}},
             {"key": "image", "type": "LoadImage", "pos": [0, 560]}]
    nodes += wan_text_nodes(prompt) + wan_head_budget(0, 900)
    nodes += [{"key": "patch", "type": "PaFuKVCachePatch", "pos": [850, 0]},
              {"key": "i2v", "type": "ARVideoI2V", "pos": [850, 300],
               "widgets": {"width": 832, "height": 480, "length": 321, "batch_size": 1}},
              {"key": "note", "type": "MarkdownNote", "pos": [850, 560], "size": [440, 320],
               "text": "**Wan 2.1 Causal Forcing image-to-video with a bounded cache** - built like ComfyUI's own "
                       "template (`video_causal_forcing_i2v`: ARVideoI2V, SamplerARVideo at 1 frame per block, 4 "
                       "steps, CFG 1) with **PaFu KV Cache Patch** between the loader and ARVideoI2V: 321 frames "
                       "(81 latent frames, four times the template's cap) at 25% of the 21-frame window. The "
                       "start image's latent is kept like a sink.\n\nModels (the frontend offers the downloads): "
                       "`causal_forcing-framewise.safetensors`, `umt5_xxl_fp8_e4m3fn_scaled.safetensors`, "
                       "`wan_2.1_vae.safetensors`.\n\n" + HEAD_NOTE}]
    links = PATCH_LINKS + [
        ("patch", "model", "i2v", "model"), ("vae", "VAE", "i2v", "vae"), ("image", "IMAGE", "i2v", "start_image"),
        ("clip", "CLIP", "text", "clip"), ("clip", "CLIP", "neg", "clip")]
    core_ar(nodes, links, "i2v", "MODEL", ("text", "CONDITIONING"), ("i2v", "LATENT"), 1, 1350, 0,
            negative=("neg", "CONDITIONING"), seed=42)
    video_out(nodes, links, ("sca", "output"), 2150, 0, "video/pafu_causal_forcing_i2v")
    return nodes, links


def wan_causal_t2v():
    prompt = FOX_PROMPT
    nodes = [{"key": "unet", "type": "UNETLoader", "pos": [0, 0], "models": [TEMPLATE_CAUSAL_FORCING],
              "widgets": {"unet_name": TEMPLATE_CAUSAL_FORCING["name"], "weight_dtype": "default"}}]
    nodes += wan_text_nodes(prompt) + wan_head_budget(0, 580)
    nodes += [{"key": "patch", "type": "PaFuKVCachePatch", "pos": [850, 0]},
              {"key": "latent", "type": "EmptyARVideoLatent", "pos": [850, 300],
               "widgets": {"width": 832, "height": 480, "length": 333, "batch_size": 1}},
              {"key": "note", "type": "MarkdownNote", "pos": [850, 520], "size": [440, 360],
               "text": "**Wan 2.1 causal text-to-video with a bounded cache** on ComfyUI's own AR sampler: the "
                       "Causal Forcing model of ComfyUI's own template (frame-wise: 1 latent frame per block), "
                       "EmptyARVideoLatent (333 frames = 84 latent frames, four times the 21-frame window), "
                       "**PaFu KV Cache Patch** at 25% of that window.\n\nModels (the frontend offers the "
                       "downloads): `causal_forcing-framewise.safetensors`, "
                       "`umt5_xxl_fp8_e4m3fn_scaled.safetensors`, `wan_2.1_vae.safetensors`. A chunk-wise "
                       f"Self-Forcing model works too: download `self_forcing_dmd.pt` from {SELF_FORCING_PT_PAGE}, "
                       "convert it with `python -m pafu_core.convert self_forcing_dmd.pt models/diffusion_models/"
                       f"{SELF_FORCING_SAFETENSORS}` and set 3 frames per block.\n\n" + HEAD_NOTE}]
    links = PATCH_LINKS + [
        ("clip", "CLIP", "text", "clip"), ("clip", "CLIP", "neg", "clip")]
    core_ar(nodes, links, "patch", "model", ("text", "CONDITIONING"), ("latent", "LATENT"), 1, 1350, 0,
            negative=("neg", "CONDITIONING"), seed=42)
    video_out(nodes, links, ("sca", "output"), 2150, 0, "video/pafu_causal_t2v")
    return nodes, links


def wan_sampler_t2v():
    """The all-in-one sampler on a Wan checkpoint: works on every supported ComfyUI (0.8.0 included)."""
    prompt = FOX_PROMPT
    nodes = [
        {"key": "unet", "type": "UNETLoader", "pos": [0, 0], "models": [TEMPLATE_CAUSAL_FORCING],
         "widgets": {"unet_name": TEMPLATE_CAUSAL_FORCING["name"], "weight_dtype": "default"}},
        {"key": "shift", "type": "ModelSamplingSD3", "pos": [0, 120], "widgets": {"shift": 5.0}},
        {"key": "clip", "type": "CLIPLoader", "pos": [0, 260], "models": [TEMPLATE_T5],
         "widgets": {"clip_name": TEMPLATE_T5["name"], "type": "wan", "device": "default"}},
        {"key": "text", "type": "CLIPTextEncode", "pos": [380, 260], "size": [420, 160], "widgets": {"text": prompt}},
        {"key": "latent", "type": "EmptyHunyuanLatentVideo", "pos": [0, 440],
         "widgets": {"width": 832, "height": 480, "length": 165, "batch_size": 1}},
        *wan_head_budget(0, 640),
        sampler("sampler", 850, 0, "budget", seed=42, chunk_frames=1),
        {"key": "vae", "type": "VAELoader", "pos": [850, 420], "models": [TEMPLATE_VAE],
         "widgets": {"vae_name": TEMPLATE_VAE["name"]}},
        {"key": "decode", "type": "VAEDecode", "pos": [1200, 0]},
        {"key": "save", "type": "SaveAnimatedWEBP", "pos": [1450, 0],
         "widgets": {"filename_prefix": "pafu_wan_t2v", "fps": 16.0, "lossless": False, "quality": 90, "method": "default"}},
        {"key": "report", "type": "PaFuCacheReport", "pos": [1200, 420]},
        {"key": "curves", "type": "SaveImage", "pos": [1450, 420], "widgets": {"filename_prefix": "pafu_wan_t2v_curves"}},
        {"key": "note", "type": "MarkdownNote", "pos": [380, 500], "size": [420, 320],
         "text": "**Wan 2.1 text-to-video with a bounded cache through the pack's own PaFu AR Chunk Sampler** "
                 "(any supported ComfyUI, 0.8.0 included): the Causal Forcing model of ComfyUI's own template "
                 "(frame-wise: chunks of 1 latent frame), 165 frames = 42 latent frames, twice the 21-frame window, "
                 "at 25% of it.\n\nModels (the frontend offers the downloads): `causal_forcing-framewise.safetensors`, "
                 "`umt5_xxl_fp8_e4m3fn_scaled.safetensors`, `wan_2.1_vae.safetensors`. For Self-Forcing (chunks of 3): "
                 f"download `self_forcing_dmd.pt` from {SELF_FORCING_PT_PAGE} and convert it with "
                 f"`python -m pafu_core.convert self_forcing_dmd.pt models/diffusion_models/{SELF_FORCING_SAFETENSORS}` "
                 "(or load the .pt with the PaFu AR Checkpoint Loader), then set chunk_frames to 3.\n\n" + HEAD_NOTE},
    ]
    links = [("unet", "MODEL", "shift", "model"), ("clip", "CLIP", "text", "clip"),
             ("shift", "MODEL", "sampler", "model"), ("text", "CONDITIONING", "sampler", "positive"),
             ("latent", "LATENT", "sampler", "latent"), ("budget", "cache", "sampler", "cache"),
             ("sampler", "latent", "decode", "samples"),
             ("vae", "VAE", "decode", "vae"), ("decode", "IMAGE", "save", "images"),
             ("sampler", "report", "report", "report"), ("decode", "IMAGE", "report", "frames"),
             ("report", "curves", "curves", "images")]
    return nodes, links


SPECS = {
    "pafu_tiny_world_long_video": tiny_long_video,
    "pafu_tiny_world_policy_comparison": tiny_comparison,
    "pafu_tiny_world_core_ar": tiny_core_ar,
    "pafu_tiny_world_distill": tiny_distill,
    "pafu_wan21_causal_forcing_i2v": wan_causal_forcing_i2v,
    "pafu_wan21_causal_t2v": wan_causal_t2v,
    "pafu_wan21_sampler_t2v": wan_sampler_t2v,
}
#: the workflows that need ComfyUI's native AR nodes (0.27+)
CORE_AR = ("pafu_tiny_world_core_ar", "pafu_wan21_causal_forcing_i2v", "pafu_wan21_causal_t2v")

BUILD_JS = """
({nodes, links}) => {
  app.graph.clear();
  const made = {};
  for (const spec of nodes) {
    const n = LiteGraph.createNode(spec.type);
    if (!n) throw new Error('unknown node type ' + spec.type);
    n.pos = spec.pos;
    if (spec.size) n.size = spec.size;
    app.graph.add(n);
    for (const [name, value] of Object.entries(spec.widgets || {})) {
      const w = (n.widgets || []).find((w) => w.name === name);
      if (!w) throw new Error(spec.type + ' has no widget ' + name);
      w.value = value;
    }
    if (spec.text !== undefined) n.widgets[0].value = spec.text;
    if (spec.models) n.properties.models = spec.models;
    if (spec.mode !== undefined) n.mode = spec.mode;
    made[spec.key] = n;
  }
  for (const [src, out, dst, inp] of links) {
    const a = made[src], b = made[dst];
    const o = a.outputs.findIndex((s) => s.name === out);
    const i = b.inputs.findIndex((s) => s.name === inp);
    if (o < 0 || i < 0) throw new Error(`bad link ${src}.${out} -> ${dst}.${inp}`);
    a.connect(o, b, i);
  }
  return JSON.parse(JSON.stringify(app.graph.serialize()));   // drop undefined, as saving a file does
}
"""


def build(url: str, names=None) -> list[str]:
    from playwright.sync_api import sync_playwright
    written = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                          "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(url, wait_until="networkidle")
        page.wait_for_function("window.app && window.app.graph", timeout=120_000)
        for name, spec in SPECS.items():
            if names and name not in names:
                continue
            nodes, links = spec()
            graph = page.evaluate(BUILD_JS, {"nodes": nodes, "links": [list(link) for link in links]})
            graph.setdefault("extra", {})["ds"] = {"scale": 1, "offset": [0, 0]}   # opens at the origin, 100%
            path = os.path.join(WORKFLOWS, name + ".json")
            with open(path, "w") as fh:
                json.dump(graph, fh, indent=1)
                fh.write("\n")
            written.append(path)
        browser.close()
    return written


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8188")
    ap.add_argument("names", nargs="*", help="only these workflows")
    args = ap.parse_args()
    for path in build(args.url, args.names):
        print("wrote", path)
