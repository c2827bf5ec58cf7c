"""The shared body of the real-data studies: train one config, write its figures, results.json and summary.md."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform

import jax

from rnn_jax import report, train
from rnn_jax.config import Config


def main(name: str, question: str, config: Config, quick: Config, argv: list[str] | None, metrics: list[str]) -> dict:
    """Parses ``--quick`` and ``--out``, runs ``config`` (or ``quick``), writes the results; returns results.json."""
    parser = argparse.ArgumentParser(prog=f"python -m experiments.{name}", description=question)
    parser.add_argument("--quick", action="store_true", help="the short version (under 2 minutes on 2 CPU cores)")
    parser.add_argument("--out", default=os.path.join("experiments", "results", name), help="output directory")
    args = parser.parse_args(argv)
    chosen = quick if args.quick else config
    chosen = dataclasses.replace(chosen, run=dataclasses.replace(chosen.run, out=args.out))
    summary = report.finish(chosen, train.train_and_evaluate(chosen, args.out), args.out)
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
