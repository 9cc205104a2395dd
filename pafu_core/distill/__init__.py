"""Distilling a salience head, shipped with the pack so the ComfyUI node can run it: rollouts of the
causal model, salience targets, the head's features, its two training stages, the ranking metrics and a
resumable job around them. Nothing here is imported until a distillation runs (the nodes import it
lazily), so loading the pack stays as light as before."""
