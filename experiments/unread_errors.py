"""Whether leaving the errors of what the loss does not read out of the Elman reverse scan pays.

Question. In a train step the loss reads the unroll's outputs, not its states or its final state, so their
cotangents are zero. The Elman custom VJP (`rnn_jax.bptt.elman_scan`) is defined with ``symbolic_zeros=True``: those
cotangents arrive as symbolic zeros, `bptt.concatenated_backward` gets None for them and adds nothing for them in its
reverse scan (and carries no zero pass-through error below `bptt.CPU_ZERO_PASS_MIN_WORK`). Before, they arrived as
arrays of zeros that the scan added. How does the train step compare, per size, on one device and on two? Both forms
run as `rnn_jax.bench` implementations of the fast path (the old one by instantiating the symbolic zeros as arrays
while it compiles), in one process with interleaved repeats; the harness checks that all agree on the first step's
loss and gradients.

Command:
  python -m experiments.unread_errors            # 5 Elman sizes, 1 and 2 devices, 11 repeats
  python -m experiments.unread_errors --quick    # 1 small size, 3 repeats

Expected runtime on 2 CPU cores: about 2 minutes (--quick: about 15 s).
Expected result (2-core Intel Xeon, 2026-11-29; results/unread_errors/): symbolic / zeros 0.75x at (64,256,32,128,32)
on one device (0.83-0.84x in three earlier throwaway runs), 0.92x there on two, 0.95-0.97x at (32,100,8,64,8), and
0.97-1.05x (a tie) at the other sizes.
Writes results.json (the harness's JSON records and agreement, and the symbolic / zeros ratios) and summary.md.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import custom_derivatives

from experiments import _common
from rnn_jax import bench, bptt

DEVICES = 2  # the CPU is presented as this many devices (one per core on the 2-core machines)
SIZES = [(1, 1000, 1, 32, 1), (32, 100, 8, 64, 8), (64, 256, 32, 128, 32), (128, 512, 64, 256, 64),
         (256, 64, 128, 512, 128)]  # fmt: skip
QUICK_SIZES = [(8, 50, 4, 16, 4)]
FORMS = ("zeros", "symbolic")


def _as_arrays(cotangent):
    """The old form: a symbolic zero instantiated as an array of zeros, as autodiff passed it before."""
    if isinstance(cotangent, custom_derivatives.SymbolicZero):
        return jnp.zeros(cotangent.aval.shape, cotangent.aval.dtype)
    return cotangent


def implementations(devices: int) -> list[bench.Implementation]:
    fast = [bench.named_implementations(["rnn-jax-fast"])[0]]
    if devices > 1:
        fast.append(bench.fast_on_devices(devices))
    settings = {"zeros": {"_known_zero": _as_arrays}, "symbolic": {}}  # read when the backward rule is traced
    return [_common.forced(impl, form, bptt, settings[form]) for impl in fast for form in FORMS]


def ratios(records: list[dict]) -> list[dict]:
    """symbolic / zeros train-step medians for each size and device count."""
    median = {
        (*(r["config"][k] for k in "BTDHO"), r["devices"], r["impl"].rsplit("-", 1)[-1]): r["median_ms"]
        for r in records
        if r["mode"] == "train"
    }
    rows = []
    for (*size, devices, form), symbolic in median.items():
        if form == "symbolic":
            zeros = median[(*size, devices, "zeros")]
            shape = dict(zip("BTDHO", size, strict=True))
            rows.append({**shape, "devices": devices, "zeros_ms": zeros, "symbolic_ms": symbolic,
                         "symbolic_over_zeros": symbolic / zeros})  # fmt: skip
    return rows


def main() -> None:
    args = _common.parse_args("unread_errors", __doc__)
    out = _common.prepare(args.out)
    sizes, repeats = (QUICK_SIZES, 3) if args.quick else (SIZES, 11)
    shapes = [bench.Shape("elman", *size) for size in sizes]
    result, disagreements = _common.harness_on_cpu_devices("unread_errors", shapes, repeats, implementations, DEVICES)
    rows = ratios(result.records)
    _common.write_json(out / "results.json", {
        "notes": result.notes, "repeats": repeats, "zero_pass_min_work": bptt.CPU_ZERO_PASS_MIN_WORK, "rows": rows,
        "records": result.records, "agreement": [a._asdict() | {"shape": a.shape._asdict()} for a in result.agreement],
    })  # fmt: skip
    table = _common.markdown_table(
        ["B, T, D, H, O", "devices", "zeros / symbolic (ms)", "symbolic / zeros"],
        [[f"{r['B']}, {r['T']}, {r['D']}, {r['H']}, {r['O']}", r["devices"],
          f"{r['zeros_ms']:.3f} / {r['symbolic_ms']:.3f}", f"{r['symbolic_over_zeros']:.2f}x"] for r in rows],
    )  # fmt: skip
    notes = "{backend} ({device}), {cpu_count} CPUs, jax {jax}, torch {torch}".format(**result.notes)
    (out / "summary.md").write_text(
        f"# The unread errors as symbolic zeros or as arrays of zeros{' (quick)' if args.quick else ''}\n\n"
        f"{notes}; {repeats} interleaved repeats; Elman train step medians\n\n{table}\n\n"
        + _common.harness_tail(result, disagreements)
    )
    _common.harness_verdict(
        "unread_errors", table, disagreements, "symbolic / zeros", [r["symbolic_over_zeros"] for r in rows]
    )


if __name__ == "__main__":
    _common.run(main)
