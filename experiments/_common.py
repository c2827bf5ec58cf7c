"""What every study shares: the command line, the output folder, JSON and the matplotlib set-up."""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
QUICK_FOLDER = "quick"  # where a --quick run writes by default, below the study's folder (git ignores it)
# the files the studies write into --out end so: results, summaries, figures, run logs, samples (their folders,
# such as a real-data study's checkpoints/, do not)
OUTPUT_SUFFIXES = (".json", ".jsonl", ".md", ".png", ".pdf", ".svg", ".txt")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each option's default, and the docstring's command lines and expected runtime as written."""


def parse_args(
    name: str,
    doc: str | None,
    flags: dict[str, str] | None = None,
    argv: list[str] | None = None,
    quick: str = "a smaller run of the same study (fewer sizes, seeds or steps; its results say quick)",
) -> argparse.Namespace:
    """Every study's command line: ``--quick``, ``--out DIR`` (default ``experiments/results/NAME`` in the
    repository, wherever the command runs; with ``--quick`` its ``quick`` subfolder, which git ignores, so that a
    quick run never replaces the committed results of a full one) and the study's own on/off ``flags``
    ({"--flag": help}). ``--out`` is made, and tried with a file, before any work: a place that cannot be written is
    refused in one line (exit 2) instead of failing when the results are written."""
    from rnn_jax import cli

    paragraphs = (doc or "").strip().split("\n\n")
    parser = argparse.ArgumentParser(
        prog=f"python -m experiments.{name}",
        description=paragraphs[0],
        epilog="\n\n".join(p for p in paragraphs if p.startswith(("Command", "Expected", "Writes"))) or None,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help=quick)
    full, quick_out = RESULTS / name, RESULTS / name / QUICK_FOLDER
    where = (
        f"the directory that results.json, summary.md and the figures go to (default: {full}; with --quick "
        f"{quick_out}, which git ignores, so that a quick run leaves the committed full results alone)"
    )
    parser.add_argument("--out", default=argparse.SUPPRESS, metavar="DIR", help=where)
    for flag, help_text in (flags or {}).items():
        parser.add_argument(flag, action="store_true", help=help_text)
    args = parser.parse_args(argv)
    if "out" not in vars(args):
        args.out = str(quick_out if args.quick else full)
    try:
        cli.output_directory("--out", args.out)
        _check_output_files(args.out)
    except ValueError as error:
        parser.error(str(error))
    return args


def _check_output_files(out: str) -> None:
    """Refuses an entry of ``out`` that a study would write as a file (a name ending in one of `OUTPUT_SUFFIXES`:
    results.json, summary.md, a figure) but that is a directory or another non-file: the study failed writing it,
    with a traceback, after all its work."""
    with os.scandir(out) as entries:
        refused = [e for e in entries if e.name.endswith(OUTPUT_SUFFIXES) and not e.is_file()]
    if refused:
        what = "a directory" if refused[0].is_dir() else "not a regular file"
        raise ValueError(
            f"--out: {refused[0].path!r} is {what}, where the study writes a file; move it away or choose another --out"
        )


def run(main: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Runs a study's ``main(*args, **kwargs)``: Ctrl-C (exit status 130) and a training run that diverged where the
    study does not expect it (exit status 1) end it in one line, not a traceback. A study writes its results when it
    has finished; the long ones keep each finished training run (`run_log`)."""
    from rnn_jax.train import TrainingDiverged

    try:
        main(*args, **kwargs)
    except TrainingDiverged as error:  # a study that does not expect divergence (those that do catch it themselves)
        print(f"{pathlib.Path(sys.argv[0]).stem}: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        name = pathlib.Path(sys.argv[0]).stem
        print(f"\n{name}: interrupted before its results were written (the long studies keep each finished training "
              "run in OUT/runs.jsonl)", file=sys.stderr)  # fmt: skip
        raise SystemExit(130) from None


def run_log(out: pathlib.Path) -> Callable[[dict[str, Any]], None]:
    """Starts ``out/runs.jsonl`` afresh; returns a function that appends one finished training run to it as a JSON
    line, so that a long study stopped part-way keeps the runs it finished (results.json, summary.md and the figures
    are written at the end)."""
    path = out / "runs.jsonl"
    path.write_text("")

    def append(record: dict[str, Any]) -> None:
        with open(path, "a") as f:
            f.write(json.dumps(_clean(record)) + "\n")

    return append


def progress(done: int, total: int, what: str, start: float) -> None:
    """One line per finished unit of a long study (``[3/32] adding T=25 lstm seed 1: success, 41 s``), so that a
    run of minutes shows where it is; ``start`` is the study's `time.perf_counter` at its start."""
    print(f"[{done}/{total}] {what}, {time.perf_counter() - start:.0f} s", flush=True)


def prepare(out: str) -> pathlib.Path:
    """``--out`` as a path (`parse_args` has made it)."""
    path = pathlib.Path(out)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _clean(value: Any) -> Any:
    """JSON-ready: non-finite floats as strings, NumPy scalars and arrays as Python values."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def write_json(path: pathlib.Path, results: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(_clean(results), f, indent=1)
        f.write("\n")


def pyplot():
    """matplotlib.pyplot drawing off-screen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def cpu_note() -> str:
    import jax

    return f"JAX {jax.__version__}, backend {jax.default_backend()}, {os.cpu_count()} CPU cores"


def trees_agree(got: Any, want: Any, rtol: float = 1e-4) -> bool:
    """Whether two pytrees of arrays agree leaf by leaf to ``rtol``, relative to each leaf's largest magnitude."""
    import jax
    import numpy as np

    return all(
        np.allclose(a, b, rtol=rtol, atol=rtol * max(float(np.max(np.abs(b))), 1e-6))
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)
    )


def interleaved(calls: dict[str, Any], repeats: int, min_sample_s: float = 0.0) -> dict[str, tuple[float, ...]]:
    """(median, p10, p90) in ms of each of ``calls`` (name -> a function of no arguments), timed as the harness
    times (`rnn_jax.bench.interleaved_samples`: in turn, repeat after repeat, A B A B ..., each sample after a
    settling pause and blocking on its result, repeated to fill ``min_sample_s``)."""
    import jax

    from rnn_jax import bench

    def blocking(call):
        return lambda: jax.block_until_ready(call())

    samples = bench.interleaved_samples({name: blocking(call) for name, call in calls.items()}, repeats, min_sample_s)
    return {name: bench.percentiles(s) for name, s in samples.items()}


def compare_forms(compiled: dict[str, Any], argument: Any, repeats: int, min_sample_s: float = 0.0) -> dict[str, Any]:
    """Compiled forms of one computation ({"in_step": f, "hoisted": g, ...}) on ``argument``: whether each later form
    agrees with the first (`trees_agree`), and each one's median and p10-p90 (`interleaved`), as a results row's
    fields ``{form}_ms``, ``{form}_p10_p90_ms``, ``{form}_over_{first}`` for each later form, and ``agrees``."""
    import functools

    import jax

    first, *others = compiled
    results = {form: jax.device_get(run(argument)) for form, run in compiled.items()}
    calls = {form: functools.partial(run, argument) for form, run in compiled.items()}
    times = interleaved(calls, repeats, min_sample_s)
    return {
        **{f"{form}_ms": times[form][0] for form in compiled},
        **{f"{form}_p10_p90_ms": times[form][1:] for form in compiled},
        **{f"{form}_over_{first}": times[form][0] / times[first][0] for form in others},
        "agrees": all(trees_agree(results[form], results[first]) for form in others),
    }


def report_forms(out: pathlib.Path, name: str, title: str, detail: str, rows: list[dict[str, Any]],
                 lead: dict[str, Any], forms: tuple[str, ...] = ("in_step", "hoisted")) -> None:  # fmt: skip
    """Writes a form comparison's results.json (the device, ``detail`` and ``rows``) and summary.md, a table of the
    ``lead`` columns (header -> the cell of a row), the size, each form's median and each later form's ratio to the
    first (`compare_forms`); prints the table, and exits with an error when a row's forms disagree."""
    import jax

    first, *others = forms
    columns = {
        **lead,
        "B, T, D, H, O": lambda r: ", ".join(str(r[k]) for k in "BTDHO"),
        **{f"{form.replace('_', ' ')} ms": lambda r, form=form: f"{r[form + '_ms']:.3f}" for form in forms},
        **{
            f"{form} / {first}".replace("_", " "): lambda r, form=form: f"{r[f'{form}_over_{first}']:.2f}x"
            for form in others
        },
        "agree": lambda r: r["agrees"],
    }
    device = f"{jax.default_backend()} ({jax.devices()[0].device_kind})"
    write_json(out / "results.json", {"device": device, "detail": detail, "rows": rows})
    table = markdown_table(list(columns), [[cell(r) for cell in columns.values()] for r in rows])
    (out / "summary.md").write_text(f"# {title}\n\n{device}, jax {jax.__version__}; {detail}\n\n{table}\n")
    print(table)
    if not all(r["agrees"] for r in rows):
        raise SystemExit(f"{name}: the forms disagree on the outputs, loss or gradients")


def forced(implementation: Any, suffix: str, module: Any, settings: dict[str, Any]) -> Any:
    """``implementation`` (a `rnn_jax.bench.Implementation`) named NAME-``suffix`` and prepared (traced and compiled)
    with ``module``'s attributes set to ``settings``, restored afterwards: how a study times both sides of a choice
    that the library makes while it traces."""

    def prepare(problem):
        saved = {name: getattr(module, name) for name in settings}
        for name, value in settings.items():
            setattr(module, name, value)
        try:
            return implementation.prepare(problem)
        finally:
            for name, value in saved.items():
                setattr(module, name, value)

    return implementation._replace(name=f"{implementation.name}-{suffix}", prepare=prepare)


def harness_on_cpu_devices(name: str, shapes: list, repeats: int, implementations_for, devices: int = 2):
    """`rnn_jax.bench.run` over ``shapes`` with ``implementations_for(n)`` on a CPU presented as ``devices`` devices
    (one per core on the 2-core machines; n = how many JAX then has): (the harness's result, the implementations
    that disagreed with the reference). Exits when the backend is not a CPU."""
    import jax

    from rnn_jax import bench, distributed

    distributed.present_cpu_devices(devices)
    if jax.default_backend() != "cpu":
        raise SystemExit(
            f"{name}: the choice it measures is made on a CPU only; this backend is {jax.default_backend()}"
        )
    result = bench.run(shapes, repeats=repeats, implementations=implementations_for(min(devices, jax.device_count())))
    return result, [a for a in result.agreement if not a.agrees]


def harness_tail(result: Any, disagreements: list) -> str:
    """The end of a harness study's summary.md: the agreement verdict and the harness's own table."""
    from rnn_jax import bench

    verdict = "all agree" if not disagreements else f"{len(disagreements)} disagree"
    return f"Agreement: {verdict}\n\n```\n{bench.format_table(result)}\n```\n"


def harness_verdict(name: str, table: str, disagreements: list, ratio: str, ratios: list[float]) -> None:
    """Prints a harness study's table and the median of its ``ratio`` over the rows; exits when any implementation
    disagreed with the reference."""
    import numpy as np

    print(table)
    if disagreements:
        raise SystemExit(f"{name}: {len(disagreements)} implementations disagree with the reference")
    print(f"median {ratio} over all rows: {np.median(ratios):.2f}x")
