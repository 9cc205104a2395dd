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

TEMPLATE_VAE = {"name": "wan_2.1_vae.safetensors", "directory": "vae",
                "url": "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/vae/wan_2.1_vae.safetensors"}
TEMPLATE_T5 = {"name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "directory": "text_encoders",
               "url": "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors"}
SELF_FORCING = {"name": "self_forcing_dmd.pt", "directory": "diffusion_models",
                "url": "https://huggingface.co/gdhe17/Self-Forcing/resolve/main/checkpoints/self_forcing_dmd.pt"}
WAN_HEAD_NAME = "pafu_wan21_self_forcing_1.3b.safetensors"

TINY_FRAMES = 360          # 10x the tiny world's 36-frame training clip


def sampler(key, x, y, cache, seed=7):
    return {"key": key, "type": "PaFuARChunkSampler", "pos": [x, y],
            "widgets": {"seed": seed, "control_after_generate": "fixed", "chunk_frames": 3,
                        "timesteps": "1000,750,500,250", "context_timestep": 0.0}}


def budget(key, x, y, policy, sink=0, reference=36, value=0.25):
    return {"key": key, "type": "PaFuKVCacheBudget", "pos": [x, y],
            "widgets": {"policy": policy, "budget": value, "budget_unit": "fraction", "sink_frames": sink,
                        "reference_frames": reference}}


def tiny_common():
    nodes = [
        {"key": "model", "type": "PaFuTinyWorldModel", "pos": [0, 0]},
        {"key": "shift", "type": "ModelSamplingSD3", "pos": [0, 120], "widgets": {"shift": 5.0}},
        {"key": "scene", "type": "PaFuTinyWorldScene", "pos": [0, 260],
         "widgets": {"style": "blue", "latent_frames": TINY_FRAMES, "batch_size": 1}},
        {"key": "head", "type": "PaFuSalienceHeadLoader", "pos": [0, 440],
         "widgets": {"source": "local", "head_name": "pafu_tiny_world.safetensors"}},
    ]
    links = [("model", "model", "shift", "model")]
    return nodes, links


def tiny_long_video():
    nodes, links = tiny_common()
    nodes += [
        budget("budget", 0, 640, "pafu"),
        sampler("sampler", 420, 0, "budget"),
        {"key": "decode", "type": "PaFuTinyWorldDecode", "pos": [800, 0], "widgets": {"scale": 8}},
        {"key": "save", "type": "SaveAnimatedWEBP", "pos": [1100, 0],
         "widgets": {"filename_prefix": "pafu_tiny_long", "fps": 12.0, "lossless": True, "quality": 80, "method": "default"}},
        {"key": "report", "type": "PaFuCacheReport", "pos": [800, 420]},
        {"key": "curves", "type": "SaveImage", "pos": [1100, 420], "widgets": {"filename_prefix": "pafu_tiny_long_curves"}},
        {"key": "kept", "type": "SaveAnimatedWEBP", "pos": [1100, 760],
         "widgets": {"filename_prefix": "pafu_tiny_long_kept", "fps": 12.0, "lossless": True, "quality": 80, "method": "default"}},
    ]
    links += [("shift", "MODEL", "sampler", "model"), ("scene", "positive", "sampler", "positive"),
              ("scene", "latent", "sampler", "latent"), ("budget", "cache", "sampler", "cache"),
              ("head", "head", "sampler", "head"), ("sampler", "latent", "decode", "latent"),
              ("decode", "frames", "save", "images"), ("sampler", "report", "report", "report"),
              ("decode", "frames", "report", "frames"), ("report", "curves", "curves", "images"),
              ("report", "kept_tokens", "kept", "images")]
    return nodes, links


COMPARED = (("keep_all", 0), ("fifo", 0), ("sink_window", 1), ("pafu", 0))


def tiny_comparison():
    nodes, links = tiny_common()
    for i, (policy, sink) in enumerate(COMPARED):
        nodes.append(budget(f"budget_{policy}", 0, 660 + 340 * i, policy, sink=sink))
        nodes.append(sampler(f"sampler_{policy}", 420, 380 * i, f"budget_{policy}"))
        nodes.append({"key": f"decode_{policy}", "type": "PaFuTinyWorldDecode", "pos": [800, 380 * i], "widgets": {"scale": 8}})
        links += [("shift", "MODEL", f"sampler_{policy}", "model"), ("scene", "positive", f"sampler_{policy}", "positive"),
                  ("scene", "latent", f"sampler_{policy}", "latent"), (f"budget_{policy}", "cache", f"sampler_{policy}", "cache"),
                  (f"sampler_{policy}", "latent", f"decode_{policy}", "latent")]
        if policy == "pafu":
            links.append(("head", "head", f"sampler_{policy}", "head"))
    prev = "decode_keep_all"
    for i, (policy, _) in enumerate(COMPARED[1:]):
        key = f"stitch_{i}"
        nodes.append({"key": key, "type": "ImageStitch", "pos": [1100, 220 * i],
                      "widgets": {"direction": "right", "match_image_size": False, "spacing_width": 8, "spacing_color": "white"}})
        links += [(prev, "IMAGE" if prev.startswith("stitch") else "frames", key, "image1"),
                  (f"decode_{policy}", "frames", key, "image2")]
        prev = key
    nodes += [
        {"key": "save", "type": "SaveAnimatedWEBP", "pos": [1450, 0],
         "widgets": {"filename_prefix": "pafu_tiny_compare", "fps": 12.0, "lossless": True, "quality": 80, "method": "default"}},
        {"key": "report", "type": "PaFuCacheReport", "pos": [1100, 760]},
        {"key": "curves", "type": "SaveImage", "pos": [1450, 760], "widgets": {"filename_prefix": "pafu_tiny_compare_curves"}},
        {"key": "note", "type": "MarkdownNote", "pos": [1450, 420], "size": [380, 200],
         "text": "**Same seed, same budget (25% of the 36-frame training clip), four policies** — left to right: "
                 "keep-all (unbounded reference), FIFO, sink + window, PaFu. The scene is hidden for 15 frames "
                 "between appearances, longer than the FIFO window: watch which policies bring it back as it was."},
    ]
    links += [(prev, "IMAGE", "save", "images"), ("sampler_pafu", "report", "report", "report"),
              ("decode_pafu", "frames", "report", "frames"), ("sampler_fifo", "report", "report", "report_b"),
              ("sampler_sink_window", "report", "report", "report_c"), ("sampler_keep_all", "report", "report", "report_d"),
              ("report", "curves", "curves", "images")]
    return nodes, links


def wan_self_forcing():
    prompt = ("A red fox trots along a snowy forest path at dawn, soft golden light through the pines, "
              "breath visible in the cold air, the camera tracking beside it, cinematic, detailed fur.")
    nodes = [
        {"key": "ckpt", "type": "PaFuARCheckpointLoader", "pos": [0, 0], "models": [SELF_FORCING],
         "widgets": {"ckpt_name": SELF_FORCING["name"], "weight_dtype": "default"}},
        {"key": "shift", "type": "ModelSamplingSD3", "pos": [0, 140], "widgets": {"shift": 5.0}},
        {"key": "clip", "type": "CLIPLoader", "pos": [0, 280], "models": [TEMPLATE_T5],
         "widgets": {"clip_name": TEMPLATE_T5["name"], "type": "wan", "device": "default"}},
        {"key": "text", "type": "CLIPTextEncode", "pos": [380, 280], "size": [420, 160], "widgets": {"text": prompt}},
        {"key": "latent", "type": "EmptyHunyuanLatentVideo", "pos": [0, 460],
         "widgets": {"width": 832, "height": 480, "length": 165, "batch_size": 1}},
        budget("budget", 0, 640, "pafu", reference=21),
        {"key": "head", "type": "PaFuSalienceHeadLoader", "pos": [0, 990],
         "widgets": {"source": "local", "head_name": WAN_HEAD_NAME}},
        sampler("sampler", 850, 0, "budget", seed=42),
        {"key": "vae", "type": "VAELoader", "pos": [850, 420], "models": [TEMPLATE_VAE],
         "widgets": {"vae_name": TEMPLATE_VAE["name"]}},
        {"key": "decode", "type": "VAEDecode", "pos": [1200, 0]},
        {"key": "save", "type": "SaveAnimatedWEBP", "pos": [1450, 0],
         "widgets": {"filename_prefix": "pafu_self_forcing", "fps": 16.0, "lossless": False, "quality": 90, "method": "default"}},
        {"key": "report", "type": "PaFuCacheReport", "pos": [1200, 420]},
        {"key": "curves", "type": "SaveImage", "pos": [1450, 420], "widgets": {"filename_prefix": "pafu_self_forcing_curves"}},
        {"key": "note", "type": "MarkdownNote", "pos": [380, 520], "size": [420, 300],
         "text": "**Wan 2.1 Self-Forcing 1.3B with PaFu-KV at 25% of the 21-frame cache** (165 frames = 42 latent "
                 "frames, twice Self-Forcing's window).\n\nModels: `self_forcing_dmd.pt` in `models/diffusion_models` "
                 "(gdhe17/Self-Forcing), `umt5_xxl_fp8_e4m3fn_scaled.safetensors` in `models/text_encoders`, "
                 "`wan_2.1_vae.safetensors` in `models/vae`.\n\nThe salience head: no public PaFu-KV head for Wan "
                 f"exists yet. Distil one with `python -m pafu_core.distill --student self_forcing_dmd.pt ...` and put it "
                 f"in `models/pafu_heads` as `{WAN_HEAD_NAME}`, or switch the budget's policy to `sink_window`."},
    ]
    links = [("ckpt", "model", "shift", "model"), ("clip", "CLIP", "text", "clip"),
             ("shift", "MODEL", "sampler", "model"), ("text", "CONDITIONING", "sampler", "positive"),
             ("latent", "LATENT", "sampler", "latent"), ("budget", "cache", "sampler", "cache"),
             ("head", "head", "sampler", "head"), ("sampler", "latent", "decode", "samples"),
             ("vae", "VAE", "decode", "vae"), ("decode", "IMAGE", "save", "images"),
             ("sampler", "report", "report", "report"), ("decode", "IMAGE", "report", "frames"),
             ("report", "curves", "curves", "images")]
    return nodes, links


SPECS = {
    "pafu_tiny_world_long_video": tiny_long_video,
    "pafu_tiny_world_policy_comparison": tiny_comparison,
    "pafu_wan21_self_forcing_t2v": wan_self_forcing,
}

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
