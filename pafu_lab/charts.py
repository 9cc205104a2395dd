"""Charts of the research benchmarks (matplotlib, Agg): quality against budget, a swept setting's plateau."""

from __future__ import annotations

import numpy as np

from .world.evaluate import mean_ci


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def plot_accuracy_vs_budget(rows, budgets, policies, path: str, frames: int, chance: float | None = None) -> None:
    """Mean primary return score with its 95% CI against the budget, one line per policy (keep-all: a band)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    xs = sorted(budgets)
    for i, pol in enumerate(policies):
        if pol == "keep_all":
            vals = [r.accuracy for r in rows if r.policy == pol]
            if vals:
                m, lo, hi = mean_ci(vals)
                ax.axhspan(lo, hi, color="0.85", label=f"keep_all (unbounded) {m:.2f}")
            continue
        per_budget = [[r.accuracy for r in rows if r.policy == pol and r.budget == b] for b in xs]
        if not all(per_budget):              # an unbounded variant (keep-all at other positions): in the table only
            continue
        stats = [mean_ci(vals) for vals in per_budget]
        m = np.array([s[0] for s in stats])
        err = np.array([[s[0] - s[1] for s in stats], [s[2] - s[0] for s in stats]])
        style = dict(ls=":", marker="s") if pol.startswith("oracle") else dict(ls="-", marker="o")
        ax.errorbar([100 * x for x in xs], m, yerr=err, capsize=3, lw=2 if pol.startswith("pafu") else 1.2,
                    color=f"C{i % 10}", label=pol, **style)
    if chance is not None:
        ax.axhline(chance, color="k", ls="--", lw=0.8, label=f"chance ({chance:.2f})")
    ax.set_xlabel("budget (% of the 36-frame training clip)")
    ax.set_ylabel("score: right - invented objects, per object (world truth)")
    ax.set_ylim(min(0.0, min((r.accuracy for r in rows), default=0.0) - 0.02), 1.02)
    ax.set_xticks([100 * x for x in xs])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    ax.set_title(f"Objects back as last seen, {frames}-frame videos (mean, 95% CI)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_sweep(values: list[float], lines: dict[str, list[float]], best: float, xlabel: str, path: str) -> None:
    """Score against the swept value (log x, 0 drawn at the left edge), the chosen value and its
    plateau band [best / 2, 2 * best] marked."""
    plt = _pyplot()
    low = min(v for v in values if v > 0) / 2
    xs = [v if v > 0 else low for v in values]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for i, (name, ys) in enumerate(lines.items()):
        ax.plot(xs, ys, marker="o", color=f"C{i}", label=f"budget {name}")
    if best > 0:
        ax.axvspan(best / 2, 2 * best, color="0.9", label="half to twice the chosen value")
    ax.axvline(best if best > 0 else low, color="k", ls="--", lw=0.8, label=f"chosen {best:g}")
    ax.set_xscale("log")
    ax.set_xticks(xs, [f"{v:g}" for v in values])
    ax.set_xlabel(xlabel + " (0 at the left edge)")
    ax.set_ylabel("score (right - invented, per object)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Tuning seed: the chosen value must sit on a plateau")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
