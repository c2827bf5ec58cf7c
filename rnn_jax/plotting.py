"""Figures of a run's metrics (matplotlib, drawn off-screen)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def loss_curve(records: Sequence[dict[str, Any]], path: str, *, baseline: float | None = None, title: str = "") -> None:
    """Writes the train and eval loss against the step, with the trivial baseline, to ``path`` (PNG).

    Args:
      records: metrics lines as written by `rnn_jax.train.train_and_evaluate`.
      path: the PNG file to write.
      baseline: the task's trivial-baseline loss, drawn as a dashed line.
      title: the figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for kind, style in (("train", "-"), ("eval", "o-")):
        points = [(r["step"], r["loss"]) for r in records if r.get("kind") == kind]
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, style, label=f"{kind} loss", markersize=3)
    if baseline is not None:
        ax.axhline(baseline, color="gray", linestyle="--", label=f"trivial baseline ({baseline:.3g})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
