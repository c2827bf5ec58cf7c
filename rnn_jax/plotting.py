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


def forecast(months: Sequence[float], truth, prediction, baseline, path: str, *, title: str = "") -> None:
    """Truth, the model's forecast and the persistence baseline against time, to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4), dpi=110)
    ax.plot(months, truth, color="black", linewidth=1.2, label="truth")
    ax.plot(months, prediction, color="tab:blue", linewidth=1.0, label="model (one month ahead)")
    ax.plot(months, baseline, color="tab:gray", linewidth=0.8, linestyle="--", label="persistence")
    ax.set_xlabel("year")
    ax.set_ylabel("monthly mean sunspot number")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def confusion_matrix(predicted, true, num_classes: int, path: str, *, title: str = "") -> None:
    """The confusion matrix (rows: true class, columns: predicted) with counts, to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    counts = np.zeros((num_classes, num_classes), int)
    np.add.at(counts, (np.asarray(true), np.asarray(predicted)), 1)
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=110)
    ax.imshow(counts, cmap="Blues")
    for i in range(num_classes):
        for j in range(num_classes):
            if counts[i, j]:
                color = "white" if counts[i, j] > counts.max() / 2 else "black"
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", color=color, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_xticks(range(num_classes))
    ax.set_yticks(range(num_classes))
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
