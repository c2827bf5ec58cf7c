"""Long time lags: which networks learn the adding problem and the temporal-order task as the sequences grow?

Question. Elman (tanh, orthogonal W_s), IRNN (relu, W_s = identity; Le et al. 2015), LSTM (forget bias 1) and
GRU, all with H = 32 and the same optimiser (adam, global-norm clipping at 1), are trained on the adding problem
(two U[0,1] values marked, target their sum; the constant predictor's MSE is 1/6) and on the temporal-order task
of Pascanu et al. (2013) (6 symbols, which of A/B came first; chance is cross-entropy ln 4) at increasing sequence
lengths T, over several seeds. A run succeeds on the adding problem when its held-out MSE is below 0.3 x 1/6 (it
must be using the marked values) and on the temporal-order task when its held-out accuracy is at least 0.99
(Pascanu et al.'s criterion: under 1% misclassified). How does the success rate fall with T for each model?

Command:
  python -m experiments.long_dependencies            # full: T in {10, 25, 50, 100}, 2 seeds, 1000 steps
  python -m experiments.long_dependencies --quick    # T in {10, 20}, 1 seed, 300 steps

Expected runtime on 2 CPU cores: about 1 minute with --quick, about 10 minutes in full.
Expected result (the full run on the 2-core development machine): at T = 10 every model succeeds; the tanh Elman
network fails first as T grows (adding: half its seeds at T = 25 and 50, none at 100; temporal order: none from
T = 50); IRNN succeeds at every length on both tasks; LSTM succeeds on temporal order up to T = 100 and on adding
up to 50 (half its seeds at 100); GRU succeeds on adding up to 100 but not on temporal order at 100. A training
budget of 1000 steps understates every model (Hochreiter & Schmidhuber train for far longer), so the table says
what this budget achieves, not what each model can do. Every number in summary.md is computed by the run.

Writes results.json, success_vs_length.png (success rate and final loss against T, with the trivial baseline)
and summary.md.

References:
  Hochreiter, S. & Schmidhuber, J. (1997). Long short-term memory. Neural Computation 9(8).
  Le, Q. V., Jaitly, N. & Hinton, G. E. (2015). A simple way to initialize recurrent networks of rectified
  linear units. arXiv:1504.00941.
  Pascanu, R., Mikolov, T. & Bengio, Y. (2013). On the difficulty of training recurrent neural networks. ICML.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from experiments import _common
from rnn_jax import train
from rnn_jax.config import Config, ModelConfig, OptimConfig, RunConfig, TaskConfig

HIDDEN = 32
MODELS = {
    "elman": ModelConfig(model="elman", hidden=HIDDEN, activation="tanh"),
    "irnn": ModelConfig(model="elman", hidden=HIDDEN, activation="relu", recurrent_init="identity"),
    "lstm": ModelConfig(model="lstm", hidden=HIDDEN),
    "gru": ModelConfig(model="gru", hidden=HIDDEN),
}
TASKS = ("adding", "temporal_order")


def succeeded(task: str, final_eval: dict[str, float], baseline: dict[str, float]) -> bool:
    """The success criterion of each task (see the module docstring)."""
    if task == "adding":
        return final_eval["mse"] < 0.3 * baseline["mse"]
    return final_eval["accuracy"] >= 0.99


def main() -> None:
    args = _common.parse_args("long_dependencies", __doc__)
    out = _common.prepare(args.out)
    start = time.perf_counter()
    lengths, seeds, steps, lr = ((10, 20), 1, 300, 1e-2) if args.quick else ((10, 25, 50, 100), 2, 1000, 3e-3)
    runs, log = [], _common.run_log(out)
    with jax.numpy_dtype_promotion("standard"):  # optax's adam
        for task in TASKS:
            for seq_len in lengths:
                for name, model in MODELS.items():
                    for seed in range(seeds):
                        config = Config(
                            model=model,
                            task=TaskConfig(task=task, seq_len=seq_len, batch_size=64),
                            optim=OptimConfig(learning_rate=lr, clip="global_norm", clip_threshold=1.0),
                            run=RunConfig(
                                steps=steps, eval_every=steps, log_every=100, eval_batches=16, progress=False, seed=seed
                            ),
                        )
                        try:
                            result = train.train_and_evaluate(config)
                            final_eval, baseline, status = result["final_eval"], result["baseline"], "completed"
                        except train.TrainingDiverged:
                            final_eval, baseline, status = {}, {}, "diverged"
                        runs.append(
                            {
                                "task": task,
                                "seq_len": seq_len,
                                "model": name,
                                "seed": seed,
                                "status": status,
                                "final_eval": final_eval,
                                "baseline": baseline,
                                "success": status == "completed" and succeeded(task, final_eval, baseline),
                            }
                        )
                        log(runs[-1])
                        outcome = "success" if runs[-1]["success"] else status if status != "completed" else "failure"
                        total = len(TASKS) * len(lengths) * len(MODELS) * seeds
                        _common.progress(len(runs), total, f"{task} T={seq_len} {name} seed {seed}: {outcome}", start)
    table = []
    for task in TASKS:
        for name in MODELS:
            for seq_len in lengths:
                mine = [r for r in runs if r["task"] == task and r["model"] == name and r["seq_len"] == seq_len]
                losses = [r["final_eval"]["loss"] for r in mine if r["status"] == "completed"]
                table.append(
                    {
                        "task": task,
                        "model": name,
                        "seq_len": seq_len,
                        "success_rate": float(np.mean([r["success"] for r in mine])),
                        "median_final_eval_loss": float(np.median(losses)) if losses else None,
                    }
                )
    results = {
        "config": {
            "quick": args.quick,
            "lengths": list(lengths),
            "seeds": seeds,
            "steps": steps,
            "hidden": HIDDEN,
            "optimizer": f"adam lr={lr:g}, global-norm clipping at 1, batch 64",
            "baselines": {"adding": 1.0 / 6.0, "temporal_order": float(np.log(4.0))},
            "success": {"adding": "eval MSE < 0.3 x 1/6", "temporal_order": "eval accuracy >= 0.99"},
        },
        "table": table,
        "runs": runs,
        "environment": _common.cpu_note(),
        "runtime_s": time.perf_counter() - start,
    }
    _common.write_json(out / "results.json", results)
    _figure(out, results)
    _summary(out, results)
    print(f"wrote {out}/results.json, figures and summary.md in {results['runtime_s']:.0f} s")


def _figure(out, results) -> None:
    plt = _common.pyplot()
    config = results["config"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), dpi=100, sharex=True)
    for column, task in enumerate(TASKS):
        for index, name in enumerate(MODELS):
            rows = [r for r in results["table"] if r["task"] == task and r["model"] == name]
            lengths = [r["seq_len"] for r in rows]
            axes[0, column].plot(lengths, [r["success_rate"] for r in rows], "o-", color=f"C{index}", label=name)
            losses = [np.nan if r["median_final_eval_loss"] is None else r["median_final_eval_loss"] for r in rows]
            axes[1, column].semilogy(lengths, losses, "o-", color=f"C{index}", label=name)
        baseline = config["baselines"][task]
        axes[1, column].axhline(baseline, color="gray", linestyle="--", label=f"trivial baseline ({baseline:.3g})")
        axes[0, column].set_title(f"{task}: success ({config['success'][task]})", fontsize=10)
        axes[0, column].set_ylim(-0.05, 1.05)
        axes[1, column].set_xlabel("sequence length T")
        axes[0, column].grid(True, alpha=0.3)
        axes[1, column].grid(True, alpha=0.3)
    axes[0, 0].set_ylabel(f"success rate over {config['seeds']} seed(s)")
    axes[1, 0].set_ylabel("median final eval loss")
    axes[0, 0].legend()
    axes[1, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "success_vs_length.png")
    plt.close(fig)


def _cell(row) -> str:
    loss = row["median_final_eval_loss"]
    return f"{row['success_rate']:.2f} ({'-' if loss is None else format(loss, '.3g')})"


def _summary(out, results) -> None:
    config = results["config"]
    sections = []
    for task in TASKS:
        rows = []
        for name in MODELS:
            cells = [r for r in results["table"] if r["task"] == task and r["model"] == name]
            rows.append([name, *[_cell(r) for r in cells]])
        header = ["model", *[f"T = {t}" for t in config["lengths"]]]
        sections.append(
            f"## {task} (success: {config['success'][task]}; trivial baseline loss {config['baselines'][task]:.3g})\n\n"
            + _common.markdown_table(header, rows)
        )
    mode = "--quick" if config["quick"] else "full"
    body = "\n\n".join(sections)
    text = f"""# Long time lags ({mode} run)

H = {config["hidden"]}; {config["optimizer"]}; {config["steps"]} steps; {config["seeds"]} seed(s) per cell.
Each cell: success rate over seeds (median final held-out loss).

{body}

{results["environment"]}; runtime {results["runtime_s"]:.0f} s. Figure: success_vs_length.png.
"""
    (out / "summary.md").write_text(text)


if __name__ == "__main__":
    _common.run(main)
