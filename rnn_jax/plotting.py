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


FIGURE_SUFFIXES = (".png", ".pdf", ".svg")


def check_figure_path(name: str, path: str) -> None:
    """Raises ValueError naming ``name`` unless ``path`` ends in one of `FIGURE_SUFFIXES` (matplotlib picks the
    format by it; an unknown one failed only when the figure was drawn, after the work)."""
    if not str(path).lower().endswith(FIGURE_SUFFIXES):
        raise ValueError(f"{name}: expected a file name ending in {', '.join(FIGURE_SUFFIXES)}, got {path!r}")


def benchmark(records: Sequence[dict[str, Any]], path: str, *, reference: str | None = None, title: str = "") -> None:
    """Writes a figure of `rnn_jax.bench` records to ``path`` (PNG, PDF or SVG by its suffix): for each problem
    size (a group of bars) and mode (the train step above, the forward pass below), each implementation's median
    time over ``reference``'s, on a log scale, with its 10th-90th percentiles as whiskers and the reference's
    median in ms under the size. Below 1 is faster than the reference. PyTorch's records (``torch-1thread``,
    ``torch-2threads``: the harness keeps the better thread count per size) are one series; the lower bounds are
    drawn in greys.

    Args:
      records: as ``rnn-jax bench --json`` writes them (`rnn_jax.bench.validate_records`), for example
        ``json.load(open("bench.json"))``; several cells and sizes may be mixed (a later record of the same
        size, mode and implementation replaces an earlier one).
      path: the file to write (``.png``, ``.pdf`` or ``.svg``).
      reference: the implementation every bar is divided by (None: rnn-jax-fast if timed, else the records' first);
        sizes and modes where it was not timed are left out.
      title: the figure's title (default: what the bars are).

    Raises:
      ValueError: for records the harness does not write (or none), a ``path`` of another suffix, or a
        ``reference`` timed nowhere in them (naming the implementations that are).
    """
    from rnn_jax.bench import CONFIG_KEYS, MODES, validate_records
    from rnn_jax.bench import _family as series  # torch-1thread, torch-2threads -> torch

    validate_records(list(records))
    check_figure_path("path", path)
    names = list(dict.fromkeys(series(r["impl"]) for r in records))
    if not names:
        raise ValueError("records: expected at least one record, got none")
    if reference is None:
        reference = "rnn-jax-fast" if "rnn-jax-fast" in names else names[0]
    if reference not in names:
        raise ValueError(f"reference: expected one of the records' implementations {names}, got {reference!r}")
    sizes = list(dict.fromkeys(tuple(r["config"][k] for k in CONFIG_KEYS) for r in records))
    by_key = {(tuple(r["config"][k] for k in CONFIG_KEYS), r["mode"], series(r["impl"])): r for r in records}
    modes = [m for m in reversed(MODES) if any((s, m, reference) in by_key for s in sizes)]  # train first
    cells = {size[0] for size in sizes}
    bounds = [n for n in names if n.startswith("lower-bound")]
    colors = {n: f"C{i}" for i, n in enumerate(n for n in names if n not in bounds)}
    colors |= {n: str(0.75 - 0.45 * i / max(1, len(bounds) - 1)) for i, n in enumerate(bounds)}  # light to dark
    labels = {n: n for n in names}
    torch_impls = sorted({r["impl"] for r in records if series(r["impl"]) == "torch"})
    if torch_impls:
        threads = ", ".join(name.removeprefix("torch-") for name in torch_impls)
        labels["torch"] = f"torch ({'the better of ' if len(torch_impls) > 1 else ''}{threads})"

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / len(names)
    size = (max(7.0, 1.6 * len(sizes) + 2.5), 3.2 * len(modes) + 1.2)
    fig, axes = plt.subplots(len(modes), 1, figsize=size, layout="constrained")  # room for the title and legend
    axes = list(getattr(axes, "flat", [axes]))
    for ax, mode in zip(axes, modes, strict=True):
        shown = [s for s in sizes if (s, mode, reference) in by_key]
        for j, name in enumerate(names):
            points = [(i, by_key[(s, mode, name)], by_key[(s, mode, reference)]["median_ms"])
                      for i, s in enumerate(shown) if (s, mode, name) in by_key]  # fmt: skip
            if not points:
                continue
            x = [i - 0.4 + width * (j + 0.5) for i, _, _ in points]
            ratio = [r["median_ms"] / ref for _, r, ref in points]
            spread = [[(r["median_ms"] - r["p10_ms"]) / ref for _, r, ref in points],
                      [(r["p90_ms"] - r["median_ms"]) / ref for _, r, ref in points]]  # fmt: skip
            ax.bar(x, ratio, width, yerr=spread, color=colors[name], label=labels[name],
                   error_kw={"linewidth": 0.8, "capsize": 1.5})  # fmt: skip
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(shown)))
        ax.set_xticklabels(
            [("" if len(cells) == 1 else f"{s[0]} ") + f"({','.join(map(str, s[1:]))})\n"
             f"{reference}: {by_key[(s, mode, reference)]['median_ms']:.3g} ms" for s in shown],
            fontsize=8,
        )  # fmt: skip
        ax.set_ylabel(f"{mode}: time / {reference}'s")
        ax.grid(True, axis="y", which="both", alpha=0.3)
    legend = {text: handle for ax in axes for handle, text in zip(*ax.get_legend_handles_labels(), strict=True)}
    drawn = [labels[n] for n in names if labels[n] in legend]  # every series once, in the records' order
    ncol = min(4, len(drawn))
    fig.legend([legend[text] for text in drawn], drawn, loc="outside lower center", ncol=ncol, fontsize=7)
    what = f"median time over {reference}'s (B,T,D,H,O; p10-p90 whiskers; below 1 is faster)"
    fig.suptitle(title or f"{', '.join(sorted(cells))}: {what}")
    fig.savefig(path, dpi=110)
    plt.close(fig)
