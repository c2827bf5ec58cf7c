"""The shared body of the real-data studies: train one config, write its figures, results.json and summary.md."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import sys

import jax

from experiments import _common
from rnn_jax import report, train
from rnn_jax.config import Config


def main(
    name: str,
    question: str,
    config: Config,
    quick: Config,
    argv: list[str] | None,
    metrics: list[str],
    doc: str | None = None,
) -> dict:
    """Parses ``--quick`` and ``--out`` (``--help`` shows the study's docstring ``doc``: its command and runtime),
    runs ``config`` (or ``quick``), writes the results; returns results.json."""
    args = _common.parse_args(name, doc or question, argv=argv, quick=f"the short version: {quick.run.steps} steps")
    earlier = [f for f in ("metrics.jsonl", "summary.json", "checkpoints") if os.path.exists(os.path.join(args.out, f))]
    if earlier:  # the study regenerates its results: an earlier run of it is replaced, not refused
        print(f"{name}: replacing the earlier run in {args.out} ({', '.join(earlier)})")
        for f in earlier:
            path = os.path.join(args.out, f)
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
    chosen = quick if args.quick else config
    # the training's progress bar where someone watches (the full Shakespeare run takes 12 minutes)
    run = dataclasses.replace(chosen.run, out=args.out, progress=sys.stderr.isatty())
    chosen = dataclasses.replace(chosen, run=run)
    try:
        summary = report.finish(chosen, train.train_and_evaluate(chosen, args.out), args.out)
    except train.TrainingInterrupted as error:  # Ctrl-C: one line, not a traceback
        raise SystemExit(f"\n{name}: {error}; the metrics so far are in {args.out}") from None
    results = {
        "study": name,
        "quick": args.quick,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {jax.default_backend()}, JAX {jax.__version__}",
        "validation": summary["final_eval"],
        "test": summary["final_test"],
        "baseline": summary["baseline"],
        "train_seconds": summary["train_seconds"],
        "steps": chosen.run.steps,
        "config": chosen.to_dict(),
        **({"sample": summary["sample"]} if "sample" in summary else {}),
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    title = f"# {name}{' (quick)' if args.quick else ''}"
    lines = [title, "", question, "", "| metric | validation | test | baseline |", "| --- | --- | --- | --- |"]
    for metric in metrics:
        base = summary["baseline"].get(metric)
        lines.append(
            f"| {metric} | {summary['final_eval'][metric]:.4g} | {summary['final_test'][metric]:.4g} | "
            f"{'' if base is None else f'{base:.4g}'} |"
        )
    lines += ["", f"{chosen.run.steps} steps in {summary['train_seconds']:.0f} s on {results['machine']}."]
    if "sample" in summary:
        lines += ["", "Sample (temperature 0.8):", "", "```", summary["sample"], "```"]
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return results
