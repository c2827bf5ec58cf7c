"""Exploding gradients: what do no clipping, elementwise value clipping and global-norm clipping do to training?

Question. An Elman network (tanh, H = 32) whose recurrent matrix is large (W_s drawn glorot_normal and rescaled to
spectral radius 2.0, so lambda_1 * gamma > 1 and the gradient can explode; Pascanu et al. 2013) is trained with SGD
(momentum 0.9, learning rate 0.1) on the adding problem (T = 20) without clipping, with elementwise clipping of the
gradient to [-t, t], and with global-norm clipping (Pascanu et al.'s Algorithm 1) at several thresholds t. Over
several seeds, how many runs diverge (the loss or gradient becomes NaN/Inf, and `train_and_evaluate` stops with
`TrainingDiverged`), how many end below the constant predictor's MSE 1/6, and how do the loss and the gradient norm
(before clipping) evolve?

Command:
  python -m experiments.exploding_gradients            # full: 8 seeds, 1000 steps, 6 variants
  python -m experiments.exploding_gradients --quick    # 3 seeds, 300 steps, 4 variants

Expected runtime on 2 CPU cores: about 30 seconds with --quick, about 4 minutes in full.
Expected result (the full run on the 2-core development machine): without clipping all 8 seeds reach NaN within the
first 60 steps; every clipping variant keeps all runs finite, but only global-norm clipping at 0.1 brings all 8
seeds below the constant predictor's loss; value clipping at 1 and global-norm clipping at 10 leave the loss far
above it. Every number in summary.md is computed by the run.

Writes results.json, loss_curves.png, grad_norm_curves.png and summary.md.

References:
  Pascanu, R., Mikolov, T. & Bengio, Y. (2013). On the difficulty of training recurrent neural networks. ICML.
"""

from __future__ import annotations

import json
import tempfile
import time

import jax
import numpy as np

from experiments import _common
from rnn_jax import train
from rnn_jax.config import Config, ModelConfig, OptimConfig, RunConfig, TaskConfig

FULL_VARIANTS = (
    ("none", None),
    ("value", 0.1),
    ("value", 1.0),
    ("global_norm", 0.1),
    ("global_norm", 1.0),
    ("global_norm", 10.0),
)
QUICK_VARIANTS = (("none", None), ("value", 1.0), ("global_norm", 1.0), ("global_norm", 10.0))
RADIUS, LEARNING_RATE, SEQ_LEN, HIDDEN = 2.0, 0.1, 20, 32


def _label(clip: str, threshold: float | None) -> str:
    return "no clipping" if clip == "none" else f"{clip} {threshold:g}"


def run_one(clip: str, threshold: float | None, seed: int, steps: int) -> dict:
    """One training run; the metrics lines are read back from its metrics.jsonl (kept on divergence too)."""
    config = Config(
        model=ModelConfig(hidden=HIDDEN, activation="tanh", recurrent_init="glorot_normal", spectral_radius=RADIUS),
        task=TaskConfig(task="adding", seq_len=SEQ_LEN, batch_size=32),
        optim=OptimConfig(
            optimizer="sgd",
            learning_rate=LEARNING_RATE,
            momentum=0.9,
            clip=clip,
            clip_threshold=1.0 if threshold is None else threshold,
        ),
        run=RunConfig(steps=steps, eval_every=steps, log_every=10, eval_batches=8, progress=False, seed=seed),
    )
    with tempfile.TemporaryDirectory() as workdir:
        diverged_at = None
        try:
            summary = train.train_and_evaluate(config, workdir)
            final_eval, baseline = summary["final_eval"]["loss"], summary["baseline"]["loss"]
        except train.TrainingDiverged as error:
            diverged_at, final_eval, baseline = error.step, float("nan"), 1.0 / 6.0
        with open(f"{workdir}/metrics.jsonl") as f:
            records = [json.loads(line) for line in f]
    trained = [r for r in records if r["kind"] == "train"]
    return {
        "clip": clip,
        "threshold": threshold,
        "seed": seed,
        "diverged_at_step": diverged_at,
        "final_eval_loss": final_eval,
        "below_baseline": diverged_at is None and final_eval < baseline,
        "steps": [r["step"] for r in trained],
        "train_loss": [r["loss"] for r in trained],
        "grad_norm": [r["grad_norm"] for r in trained],
        "clip_fraction": float(np.mean([r["clip_fraction"] for r in trained])) if trained else float("nan"),
        "max_grad_norm": float(np.max([r["grad_norm"] for r in trained])) if trained else float("nan"),
    }


def main() -> None:
    args = _common.parse_args("exploding_gradients", __doc__)
    out = _common.prepare(args.out)
    start = time.perf_counter()
    variants, seeds, steps = (QUICK_VARIANTS, 3, 300) if args.quick else (FULL_VARIANTS, 8, 1000)
    runs, log = [], _common.run_log(out)
    with jax.numpy_dtype_promotion("standard"):  # optax
        for clip, threshold in variants:
            for seed in range(seeds):
                runs.append(run_one(clip, threshold, seed, steps))
                run = runs[-1]
                log(run)
                ending = "diverged" if run["diverged_at_step"] is not None else f"loss {run['final_eval_loss']:.4g}"
                what = f"{_label(clip, threshold)} seed {seed}: {ending}"
                _common.progress(len(runs), len(variants) * seeds, what, start)
    table = []
    for clip, threshold in variants:
        mine = [r for r in runs if r["clip"] == clip and r["threshold"] == threshold]
        finite = [r["final_eval_loss"] for r in mine if r["diverged_at_step"] is None]
        table.append(
            {
                "variant": _label(clip, threshold),
                "clip": clip,
                "threshold": threshold,
                "seeds": len(mine),
                "diverged": sum(r["diverged_at_step"] is not None for r in mine),
                "below_baseline": sum(r["below_baseline"] for r in mine),
                "median_final_eval_loss_of_finite_runs": float(np.median(finite)) if finite else None,
                "mean_clip_fraction": float(np.nanmean([r["clip_fraction"] for r in mine])),
                "max_grad_norm": float(np.nanmax([r["max_grad_norm"] for r in mine])),
            }
        )
    results = {
        "config": {
            "quick": args.quick,
            "seeds": seeds,
            "steps": steps,
            "model": f"elman tanh H={HIDDEN}, W_s glorot_normal at spectral radius {RADIUS}",
            "task": f"adding T={SEQ_LEN}, batch 32",
            "optimizer": f"sgd lr={LEARNING_RATE} momentum 0.9",
            "baseline_loss": 1.0 / 6.0,
        },
        "table": table,
        "runs": runs,
        "environment": _common.cpu_note(),
        "runtime_s": time.perf_counter() - start,
    }
    _common.write_json(out / "results.json", results)
    _figures(out, results, variants)
    _summary(out, results)
    print(f"wrote {out}/results.json, figures and summary.md in {results['runtime_s']:.0f} s")


def _figures(out, results, variants) -> None:
    plt = _common.pyplot()
    for key, name, ylabel in (
        ("train_loss", "loss_curves.png", "train loss (mean over 10 steps)"),
        ("grad_norm", "grad_norm_curves.png", "gradient norm before clipping"),
    ):
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
        for index, (clip, threshold) in enumerate(variants):
            label = _label(clip, threshold)
            for run in (r for r in results["runs"] if r["clip"] == clip and r["threshold"] == threshold):
                ax.semilogy(run["steps"], run[key], color=f"C{index}", alpha=0.7, linewidth=1, label=label)
                label = None
                if run["diverged_at_step"] is not None:
                    ax.axvline(run["diverged_at_step"], color=f"C{index}", linestyle=":", linewidth=1)
        if key == "train_loss":
            ax.axhline(1 / 6, color="gray", linestyle="--", label="constant predictor (1/6)")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title("Elman tanh, spectral radius 2, SGD: dotted lines mark NaN divergence")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name)
        plt.close(fig)


def _summary(out, results) -> None:
    config = results["config"]
    rows = [
        [
            r["variant"],
            f"{r['diverged']} / {r['seeds']}",
            f"{r['below_baseline']} / {r['seeds']}",
            "-"
            if r["median_final_eval_loss_of_finite_runs"] is None
            else f"{r['median_final_eval_loss_of_finite_runs']:.3g}",
            f"{r['mean_clip_fraction']:.2f}",
            f"{r['max_grad_norm']:.3g}",
        ]
        for r in results["table"]
    ]
    table = _common.markdown_table(
        ["clipping", "diverged (NaN)", "below baseline", "median final eval loss", "clip fraction", "max grad norm"],
        rows,
    )
    mode = "--quick" if config["quick"] else "full"
    text = f"""# Exploding gradients ({mode} run)

{config["model"]}; {config["task"]}; {config["optimizer"]}; {config["steps"]} steps, {config["seeds"]} seeds.
"diverged" = the loss or gradient became NaN/Inf (the run stops); "below baseline" = final held-out loss under the
constant predictor's {config["baseline_loss"]:.3f}; the median is over the runs that did not diverge; "max grad norm" is
the largest 10-step mean of the gradient norm before clipping.

{table}

{results["environment"]}; runtime {results["runtime_s"]:.0f} s. Figures: loss_curves.png, grad_norm_curves.png.
"""
    (out / "summary.md").write_text(text)


if __name__ == "__main__":
    _common.run(main)
