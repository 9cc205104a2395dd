"""What a finished distillation leaves in ``models/pafu_heads``: the head file (its recipe and held-out
figures in its metadata) and a model card beside it (``<name>.md``) that says what it was made for, how
good it is where no truth exists, and how to share it on the Hugging Face Hub."""

from __future__ import annotations

import dataclasses
import os
import re

from ..salience import save_head
from .job import DistillJob, DistillOutcome

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def head_stem(name: str, folder_label: str = "models/pafu_heads") -> str:
    """The file stem a head ``name`` gives (``.safetensors`` may be typed), or one sentence refusing a name
    that is empty or could leave the heads folder."""
    stem = name.strip().removesuffix(".safetensors")
    if not _NAME.fullmatch(stem) or ".." in stem:
        raise ValueError(f"head name {name!r} must be 1-100 letters, digits, '.', '_' or '-' starting with a letter "
                         f"or digit, so the file stays in {folder_label}")
    return stem


def recipe_summary(job: DistillJob) -> dict:
    """The recipe fields that shaped the head (paths and run-only fields left out), for its metadata."""
    skip = {"student", "teacher", "clips", "save_clips", "out", "ckpt_dir", "resume", "stop_at", "extra",
            "tiny_random", "random_wan13b", "contexts"}
    return {k: v for k, v in dataclasses.asdict(job.cfg).items() if k not in skip}


def publish(outcome: DistillOutcome, job: DistillJob, folder: str, name: str, model_file: str,
            model_fingerprint: str, seconds: float) -> tuple[str, str]:
    """Write ``<folder>/<name>.safetensors`` and ``<name>.md``, then delete the job's work folder.

    Returns:
        (head path, card path).
    """
    stem = head_stem(name)
    os.makedirs(folder, exist_ok=True)
    head_path, card_path = (os.path.join(folder, stem + ext) for ext in (".safetensors", ".md"))
    figures = {k: v for k, v in outcome.metrics.items() if k != "psnr_per_frame"}
    outcome.head.config.training = {
        "made_with": "PaFu Distill Salience Head (ComfyUI)", "student": os.path.basename(model_file),
        "student_fingerprint": model_fingerprint, "recipe": recipe_summary(job),
        "prompts": {"train": len(job.train_prompts), "heldout": len(job.heldout_prompts)},
        "seeds": seeds(job), "eval": figures, "minutes": round(seconds / 60, 2),
    }
    save_head(outcome.head, head_path)
    tmp = card_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(model_card(stem, outcome, job, model_file, model_fingerprint, seconds))
    os.replace(tmp, card_path)
    job.discard()
    return head_path, card_path


def seeds(job: DistillJob) -> dict:
    seed = job.cfg.seed
    drawn = {"recipe": seed}
    if job.watched is None:
        drawn["rollout_noise"] = f"{seed} * 7919 + i (i < {job.cfg.rollouts})"
    return drawn | {"held_out": f"clips 0..{job.cfg.heldout - 1}", "fidelity_noise": "50000 + i per held-out prompt"}


def clips_source(job: DistillJob) -> str:
    """What the head learned from, in words: the prompts' watched videos or the model's own rollouts."""
    n = job.cfg.rollouts
    return (f"{n} watched videos of the prompts (PaFu Prompt List's videos)" if job.watched is not None
            else f"{n} of the model's own rollouts of the prompts")


def model_card(stem: str, outcome: DistillOutcome, job: DistillJob, model_file: str, fingerprint: str,
               seconds: float) -> str:
    """The card's Markdown: model, recipe, seeds, held-out figures, how to use and share it."""
    cfg, m = job.cfg, outcome.metrics
    lines = [f"# {stem}: a PaFu-KV salience head", "",
             f"Distilled in ComfyUI for **{os.path.basename(model_file)}** (weights fingerprint `{fingerprint}`) in "
             f"{seconds / 60:.1f} minutes. It scores which cached tokens later chunks will use, so the `pafu` "
             "policy keeps the most salient ones within the budget.", "",
             "## Use", "", f"Put `{stem}.safetensors` in `models/pafu_heads`, pick it in **PaFu Salience Head "
             "Loader**, connect the head and set the budget's policy to `pafu`. It refuses a model of another shape.", "",
             "## Recipe", "", "| setting | value |", "|---|---|"]
    for key in ("rollouts", "heldout", "rollout_frames", "latent_size", "chunk_frames", "timesteps", "targets",
                "rescore", "age_form", "hidden", "steps", "rescore_steps", "lr", "eval_budget", "eval_frames"):
        lines.append(f"| {key} | {getattr(cfg, key)} |")
    lines += ["", f"Clips: {clips_source(job)}.", "", f"Prompts: {len(job.train_prompts)} for training, {len(job.heldout_prompts)} held out"
              + (" (one prompt: held-out rollouts differ by their noise only)" if job.train_prompts is
                 job.heldout_prompts else "") + ".", "",
              "Seeds: " + "; ".join(f"{k} {v}" for k, v in seeds(job).items()) + ".", "",
              "## How good it is (held out)", "",
              "Against its targets (the attention later chunks give each token), on the held-out clips:", "",
              "| scorer | Spearman | top-k recall |", "|---|---|---|"]
    for name in ("pafu_head", "key_norm"):
        lines.append(f"| {name} | {m[name]['spearman']:.3f} | {m[name]['topk_recall']:.3f} |")
    if "psnr_vs_keep_all" in m:
        frames = cfg.eval_frames or 2 * cfg.rollout_frames
        lines += ["", f"Fidelity to keep-all with the same noise ({frames} latent frames, budget "
                  f"{100 * cfg.eval_budget:g}% of the clip; latent PSNR, higher is closer; on the tiny world this "
                  "signal ranks policies roughly as the truth does, Spearman +0.30 to +0.89 by setting; a head judged by it "
                  "alone is judged loosely):", "",
                  "| policy | mean PSNR (dB) |", "|---|---|"]
        for name, db in m["psnr_vs_keep_all"].items():
            lines.append(f"| {name} | {db:.2f} |")
    lines += ["", "## Share it on the Hugging Face Hub", "", "```",
              f"huggingface-cli upload <you>/<repo> {stem}.safetensors {stem}.md",
              "```", "", "Others load it with the head loader's `hub` source: repo `<you>/<repo>`, file "
              f"`{stem}.safetensors`.", ""]
    return "\n".join(lines)


def summary_text(outcome: DistillOutcome, job: DistillJob, head_path: str) -> str:
    """The node's few lines: where the head went, what it learned from, its held-out ranking and fidelity,
    what was resumed."""
    m = outcome.metrics
    lines = [f"wrote {head_path} (and its .md card), learned from {clips_source(job)}",
             f"held-out Spearman {m['pafu_head']['spearman']:.3f} (key norm {m['key_norm']['spearman']:.3f}), "
             f"top-k recall {m['pafu_head']['topk_recall']:.3f}"]
    if "psnr_vs_keep_all" in m:
        lines.append("PSNR to keep-all: " + ", ".join(f"{k} {v:.2f} dB" for k, v in m["psnr_vs_keep_all"].items()))
    resumed = {k: v for k, v in outcome.resumed_from.items() if v}
    if resumed:
        lines.append("resumed: " + ", ".join(f"{k} from {v}" for k, v in resumed.items()))
    return "\n".join(lines)
