"""Sequence to sequence: can an encoder-decoder turn number names it has never seen into their digits, exactly?

Question. An LSTM encoder-decoder (Sutskever et al. 2014; Cho et al. 2014) reads an English number name up to
999 999 ("four hundred twelve thousand seven", 1 to 9 words) and writes its digits and <end> (2 to 7 tokens),
trained with teacher forcing and evaluated by greedy decoding on 2000 held-out numbers that are never drawn in
training. How often is the whole output exactly right, next to the best source-blind predictor, and does feeding
the source reversed (Sutskever et al.'s trick) make it learn faster?

Command:
  python -m experiments.seq2seq_numbers            # full: max 999999, LSTM H = 128, 2500 steps, forward and reversed
  python -m experiments.seq2seq_numbers --quick    # max 999, LSTM H = 32, 300 steps each

Expected runtime on 2 CPU cores: about 3 minutes in full, under 1 minute with --quick.
Expected result: exact match above 0.95 on the held-out test numbers in full for both source orders (measured: 0.999
in reading order, 1.000 reversed), against 0 for the source-blind baseline; above 0.5 with --quick (0.99 measured).
Writes results.json, summary.md, summary.json (both runs' summaries), metrics_forward.jsonl and
metrics_reversed.jsonl (every train and eval line), loss_curve.png (the forward run, `rnn_jax.plotting`),
exact_match.png (held-out exact match over training, both runs) and examples.md (test translations with
every error of each run, up to 40).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import sys
import time

import jax
import numpy as np

from experiments import _common
from rnn_jax import plotting, seq2seq, tasks, train
from rnn_jax.config import Config, ModelConfig, OptimConfig, RunConfig, TaskConfig

NAME = "seq2seq_numbers"
QUESTION = __doc__.split("\n\n")[1].removeprefix("Question. ")
CONFIG = Config(
    model=ModelConfig(model="lstm", hidden=128),
    task=TaskConfig(task="numbers", max_value=999_999, batch_size=64),
    optim=OptimConfig(learning_rate=3e-3),
    run=RunConfig(steps=2500, eval_every=100, progress=False),
)
QUICK = Config(
    model=ModelConfig(model="lstm", hidden=32),
    task=TaskConfig(task="numbers", max_value=999, batch_size=32),
    optim=OptimConfig(learning_rate=1e-2),
    run=RunConfig(steps=300, eval_every=50, progress=False),
)
VARIANTS = {"forward": False, "reversed": True}  # the source fed first word first, or last word first


def _examples(config: Config, params, max_correct: int = 12, max_errors: int = 40) -> dict:
    """Greedy translations of the test numbers: the first few right ones and every error (up to ``max_errors``).

    An output is right when its digits up to the first <end> are the number's and an <end> was emitted, which is
    the exact-match criterion of `rnn_jax.seq2seq.sequence_metrics`.
    """
    task = tasks.make(config.task)
    batch = task.eval_batch("test")
    decode = jax.jit(functools.partial(seq2seq.greedy_decode, activation=config.model.activation), static_argnums=3)
    tokens = np.asarray(decode(params, batch.source, batch.source_lengths, batch.target.shape[0]).tokens)
    rows = []
    for i, n in enumerate(task.numbers("test").tolist()):
        output = task.target_text(tokens[:, i]) + ("" if (tokens[:, i] == seq2seq.END).any() else " (no <end>)")
        rows.append({"number": n, "source": " ".join(tasks.numbers.spell(n)), "output": output})
    errors = [r for r in rows if r["output"] != str(r["number"])]
    return {
        "test_numbers": len(rows),
        "errors": len(errors),
        "correct_examples": [r for r in rows if r["output"] == str(r["number"])][:max_correct],
        "error_examples": errors[:max_errors],
    }


def _curve(records: list[dict], metric: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[metric]) for r in records if r["kind"] == "eval"]
    return [s for s, _ in points], [v for _, v in points]


def main(argv: list[str] | None = None) -> dict:
    args = _common.parse_args(NAME, QUESTION, argv=argv, quick="the short version (under 1 minute on 2 CPU cores)")
    out = _common.prepare(args.out)
    base = QUICK if args.quick else CONFIG
    runs, summaries = {}, {}
    start = time.perf_counter()
    for variant, reverse in VARIANTS.items():
        config = dataclasses.replace(base, task=dataclasses.replace(base.task, reverse_source=reverse))
        print(f"{variant}: training {config.model.model} H={config.model.hidden} for {config.run.steps} steps")
        summary = train.train_and_evaluate(config)  # no workdir: no checkpoints; the files are written below
        with open(out / f"metrics_{variant}.jsonl", "w") as f:
            f.writelines(json.dumps(record) + "\n" for record in summary["records"])
        steps, exact = _curve(summary["records"], "exact_match")
        runs[variant] = {
            "reverse_source": reverse,
            "validation": summary["final_eval"],
            "test": summary["final_test"],
            "train_seconds": summary["train_seconds"],
            "compile_seconds": summary["compile_s"],
            "steps_per_second": summary["steps_per_second"],
            "first_step_with_validation_exact_match_0.9": next(
                (s for s, v in zip(steps, exact, strict=True) if v >= 0.9), None
            ),
            "curve": {"step": steps, "validation_exact_match": exact},
            "examples": _examples(config, summary["params"]),
        }
        summaries[variant] = {k: v for k, v in summary.items() if k not in ("params", "records")}
        if variant == "forward":
            plotting.loss_curve(
                summary["records"], str(out / "loss_curve.png"), baseline=summary["baseline"]["loss"],
                title=f"{config.model.model} encoder-decoder on numbers up to {config.task.max_value}",
            )  # fmt: skip
    baseline = summaries["forward"]["baseline"]
    results = {
        "study": NAME,
        "question": QUESTION,
        "quick": args.quick,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {jax.default_backend()}, JAX {jax.__version__}",
        "runtime_s": time.perf_counter() - start,
        "baseline": baseline,
        "held_out": {
            "validation": len(tasks.make(base.task).numbers("validation")),
            "test": len(tasks.make(base.task).numbers("test")),
        },  # fmt: skip
        "runs": runs,
        "config": base.to_dict(),
    }
    _common.write_json(out / "results.json", results)
    _common.write_json(out / "summary.json", summaries)
    _plot_exact_match(runs, baseline["exact_match"], out / "exact_match.png", base)
    _write_examples(runs, out / "examples.md")
    lines = _summary_lines(results, base)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return results


def _plot_exact_match(runs: dict, baseline: float, path, config: Config) -> None:
    plt = _common.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for variant, run in runs.items():
        ax.plot(run["curve"]["step"], run["curve"]["validation_exact_match"], "o-", markersize=3,
                label=f"{variant} source (test {run['test']['exact_match']:.3f})")  # fmt: skip
    ax.axhline(baseline, color="gray", linestyle="--", label=f"source-blind baseline ({baseline:.3g})")
    ax.set_xlabel("step")
    ax.set_ylabel("exact match, held-out validation numbers")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(
        f"greedy decoding, {config.model.model} H={config.model.hidden}, numbers up to {config.task.max_value}"
    )
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _write_examples(runs: dict, path) -> None:
    lines = ["# Greedy translations of held-out test numbers", ""]
    for variant, run in runs.items():
        examples = run["examples"]
        lines += [f"## {variant} source: {examples['errors']} errors in {examples['test_numbers']} test numbers", ""]
        table = [[e["source"], e["output"], e["number"]] for e in examples["correct_examples"]]
        lines += ["Right:", "", _common.markdown_table(["source", "output", "number"], table), ""]
        if examples["error_examples"]:
            table = [[e["source"], e["output"], e["number"]] for e in examples["error_examples"]]
            lines += [
                "Wrong (every error, up to 40):",
                "",
                _common.markdown_table(["source", "output", "expected"], table),
            ]
            lines += [""]
    path.write_text("\n".join(lines))


def _summary_lines(results: dict, config: Config) -> list[str]:
    baseline = results["baseline"]
    rows = [["source-blind baseline", "", f"{baseline['exact_match']:.3f}", f"{baseline['token_accuracy']:.3f}",
             f"{baseline['loss']:.3f}", "", ""]]  # fmt: skip
    for variant, run in results["runs"].items():
        rows.append([
            f"{variant} source", f"{run['validation']['exact_match']:.3f}", f"{run['test']['exact_match']:.3f}",
            f"{run['test']['token_accuracy']:.4f}", f"{run['test']['loss']:.4f}",
            run["first_step_with_validation_exact_match_0.9"], f"{run['train_seconds']:.0f}",
        ])  # fmt: skip
    header = ["model", "validation exact match", "test exact match", "test token accuracy", "test loss",
              "first eval step with validation exact match >= 0.9", "train s"]  # fmt: skip
    return [
        f"# {NAME}{' (quick)' if results['quick'] else ''}",
        "",
        results["question"],
        "",
        f"{config.model.model} encoder-decoder, H = E = {config.model.hidden}, numbers up to {config.task.max_value}, "
        f"{config.run.steps} steps of B = {config.task.batch_size}, Adam lr {config.optim.learning_rate}; "
        f"held out: {results['held_out']['validation']} validation and {results['held_out']['test']} test numbers.",
        "",
        _common.markdown_table(header, rows),
        "",
        f"Total {results['runtime_s']:.0f} s on {results['machine']}. Examples and errors: examples.md.",
    ]


if __name__ == "__main__":
    _common.run(main, sys.argv[1:])
