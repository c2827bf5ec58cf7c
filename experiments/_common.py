"""What every study shares: the command line, the output folder, JSON and the matplotlib set-up."""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
from typing import Any

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def parse_args(name: str, doc: str | None, flags: dict[str, str] | None = None) -> argparse.Namespace:
    """``--quick``, ``--out DIR`` (default ``experiments/results/NAME``) and the study's own on/off ``flags``
    ({"--flag": help})."""
    parser = argparse.ArgumentParser(prog=f"python -m experiments.{name}", description=(doc or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run (under 2 minutes on 2 CPU cores)")
    parser.add_argument("--out", default=str(RESULTS / name), metavar="DIR", help="where the results go")
    for flag, help_text in (flags or {}).items():
        parser.add_argument(flag, action="store_true", help=help_text)
    return parser.parse_args()


def prepare(out: str) -> pathlib.Path:
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
