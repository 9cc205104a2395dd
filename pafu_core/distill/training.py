"""The head's two training stages (entry MLPs, then re-scoring MLPs), resumable from a checkpoint of the
step, the optimisers, the schedulers and the sampling stream."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..salience import SalienceHead
from .features import Example, entry_of_every_token, newer_by_frame, rescore_inputs
from .recipe import DistillConfig

#: the targets' softmax temperature in the listwise ranking loss (targets are normalised to [0, 1])
RANK_TEMPERATURE = 0.05


def distill_loss(pred: torch.Tensor, target: torch.Tensor, cfg: DistillConfig) -> torch.Tensor:
    """Listwise softmax cross-entropy over a list of tokens (per layer) + MSE on the targets, equally weighted."""
    soft = torch.softmax(target / RANK_TEMPERATURE, dim=-1)
    rank = -(soft * torch.log_softmax(pred, dim=-1)).sum(-1).mean()
    return rank + F.mse_loss(pred, target)


def checkpoint_path(cfg: DistillConfig) -> str | None:
    """Where training keeps its resumable state (``cfg.ckpt_dir``), or None for a run without one."""
    return os.path.join(cfg.ckpt_dir, "distill_state.pt") if cfg.ckpt_dir else None


def checkpoint_step(cfg: DistillConfig) -> int:
    """The step a resumed run would start from (0: no checkpoint)."""
    path = checkpoint_path(cfg)
    if not (path and os.path.exists(path)):
        return 0
    return int(torch.load(path, map_location="cpu", weights_only=True)["step"])


#: ``on_step(done, total, recent_loss)`` after every training step: progress, and the caller's chance to
#: stop the run between steps (raise: with a checkpoint folder, the step it stopped at is saved first)
StepCallback = Callable[[int, int, "torch.Tensor"], None]


def train(head: SalienceHead, examples: list[Example], cfg: DistillConfig, rank: int = 0, world: int = 1,
          student=None, on_step: StepCallback | None = None) -> tuple[list[float], int]:
    """Stage 1 (entry MLPs, ``cfg.steps``), then stage 2 (re-scoring MLPs, ``cfg.rescore_steps``).

    Returns:
        the loss of every step this call ran, and the step it started from (> 0 when resumed).
    """
    with torch.enable_grad():      # whatever grad mode the caller is in
        return _Training(head, examples, cfg, rank, world, student).run(on_step)


def _entry_loss(head, ex: Example, cfg: DistillConfig, student=None) -> torch.Tensor:
    pred = head(ex.features.to(head.w1))
    return distill_loss(pred, ex.featured(ex.target).to(pred), cfg)


def _rescore_loss(head, ex: Example, cfg: DistillConfig, student=None) -> torch.Tensor:
    with torch.no_grad():
        entry = entry_of_every_token(head, ex, student, cfg)
        grid = newer_by_frame(entry, ex.tokens_per_frame)
    losses = [distill_loss(head.rescore(*rescore_inputs(entry, grid, t, ex)), tgt.to(entry), cfg)
              for t, tgt in ex.commits.items()]
    return torch.stack(losses).mean()


class _Training:
    """The optimisers, schedulers and sampling stream of one run, and their checkpoint."""

    def __init__(self, head: SalienceHead, examples: list[Example], cfg: DistillConfig, rank: int, world: int,
                 student=None):
        self.head, self.examples, self.cfg, self.rank, self.world, self.student = \
            head, examples, cfg, rank, world, student
        self.stages = [("entry", cfg.steps, ("w1", "b1", "w2", "b2"), _entry_loss)]
        if head.rescores:
            names = ("r1", "rb1", "r2", "rb2") + (("age_w",) if head.config.age_form == "monotone" else ())
            self.stages.append(("rescore", cfg.rescore_steps, names, _rescore_loss))
        self.total = sum(s[1] for s in self.stages)
        self.params = dict(head.named_parameters())
        self.opts = [torch.optim.AdamW([self.params[p] for p in names], lr=cfg.lr, weight_decay=cfg.weight_decay)
                     for _, _, names, _ in self.stages]
        self.scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=max(1, s[1]))
                       for o, s in zip(self.opts, self.stages)]
        self.gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
        self.ckpt = checkpoint_path(cfg)

    def run(self, on_step: StepCallback | None) -> tuple[list[float], int]:
        cfg = self.cfg
        start = self.load() if cfg.resume and self.ckpt and os.path.exists(self.ckpt) else 0
        end = min(self.total, cfg.stop_at) if cfg.stop_at > 0 else self.total
        losses: list[torch.Tensor] = []
        for step in range(start, end):
            losses.append(self.step(0 if step < cfg.steps else 1))
            saved = bool(self.ckpt) and ((step + 1) % cfg.ckpt_every == 0 or step + 1 == end)
            if saved:
                self.save(step + 1)
            if on_step is not None:
                try:
                    on_step(step + 1, end, losses[-1])
                except BaseException:           # a cancel: keep every step done, so a re-run resumes here
                    if self.ckpt and not saved:
                        self.save(step + 1)
                    raise
        return [float(v) for v in losses], start

    def step(self, stage: int) -> torch.Tensor:
        _, _, names, loss_fn = self.stages[stage]
        ex = self.examples[int(torch.randint(len(self.examples), (1,), generator=self.gen))]
        loss = loss_fn(self.head, ex, self.cfg, self.student)
        loss.backward()
        if self.world > 1:        # data parallel: average this stage's gradients over the ranks
            for p in (self.params[n] for n in names):
                torch.distributed.all_reduce(p.grad)
                p.grad /= self.world
        self.opts[stage].step()
        self.opts[stage].zero_grad(set_to_none=True)
        self.scheds[stage].step()
        return loss.detach()

    def load(self) -> int:
        state = torch.load(self.ckpt, map_location="cpu", weights_only=True)
        self.head.load_state_dict(state["head"])
        for o, s, so, ss in zip(self.opts, self.scheds, state["opts"], state["scheds"]):
            o.load_state_dict(so)
            s.load_state_dict(ss)
        self.gen.set_state(state["rng"][self.rank] if self.world > 1 else state["rng"][0])
        return int(state["step"])

    def save(self, step: int) -> None:
        rng = [self.gen.get_state()]
        if self.world > 1:      # every rank's sampling stream, so a resumed run continues exactly
            rng = [torch.empty_like(rng[0]) for _ in range(self.world)]
            torch.distributed.all_gather(rng, self.gen.get_state())
        if self.rank == 0:
            os.makedirs(self.cfg.ckpt_dir, exist_ok=True)
            torch.save({"head": self.head.state_dict(), "opts": [o.state_dict() for o in self.opts],
                        "scheds": [s.state_dict() for s in self.scheds], "step": step, "rng": rng},
                       self.ckpt + ".tmp")
            os.replace(self.ckpt + ".tmp", self.ckpt)
